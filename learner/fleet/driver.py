"""The driver of the actor-learner loop: `python run_loop.py robot=sim loop.workers=N` (the `ray` extra).

Starts (or joins, `loop.ray_address`) Ray, a model board, one learner actor and N collector actors
(learner/fleet/actors.py), then keeps one interaction in flight per collector and one `tick` in flight
for the learner until every collector has done its quota (`loop.interactions` split over the workers),
the time budget is spent, or Ctrl-C. The robots never wait for training: the learner retrains in its own
process and the collectors hot-swap each new model version between two interactions.

The driver is the only writer of the interaction rows of `metrics.jsonl` (the learner actor appends its
own training and evaluation rows): every row names its `worker` and the `model_version` it acted with;
a "fleet" row every `STATUS_EVERY_S` seconds holds each worker's rate and model version, as the
progress bar does. A collector that dies (SIGKILL, a crash) is restarted by Ray, reopens and repairs its
shard, and goes on; one whose robot raises is logged and restarted, and stopped after `MAX_FAILURES`
failures in a row. Killing the whole run and running the same command again resumes every shard and the
learner (its checkpoint, a half-done retrain included).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from learner.loop.learner_side import append_metric

MAX_FAILURES = 3
STATUS_EVERY_S = 30.0


@dataclass
class WorkerStatus:
    worker_id: int
    quota: int
    records: int = 0
    model_version: int = 0
    failures: int = 0  # robot errors in a row
    restarts: int = 0
    killed_by_driver: bool = False  # the driver restarted it after a robot error: its next call may find it down
    interactions: int = 0  # this session
    busy_s: float = 0.0  # this session: seconds spent in interactions
    first_start: float = 0.0  # unix seconds: the start of this session's first interaction
    last_end: float = 0.0  # unix seconds: the end of its latest
    times: list[float] = field(default_factory=list)  # end times of the last interactions (rate)

    def rate(self) -> float:
        t = self.times[-20:]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class FleetRun:
    """One invocation of the actor-learner loop on a run directory."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, collector_specs: list, learner_spec: Any):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.collector_specs = collector_specs
        self.learner_spec = learner_spec
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.status = {s.worker_id: WorkerStatus(s.worker_id, s.quota) for s in collector_specs}
        self._stop = False

    def _metric(self, rec: dict[str, Any]) -> None:
        append_metric(self.metrics_path, rec)

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        tqdm.write("Ctrl-C: stopping after the interactions in flight (press again to abort at once)")

    def run(self) -> dict[str, Any]:
        import ray

        from learner.fleet.actors import CollectorActor, LearnerActor, ModelBoard

        lp = self.cfg.loop
        address = str(lp.ray_address or "") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False,
                 **({} if address else {"num_cpus": max(2, len(self.collector_specs) + 1)}))
        t_start = time.time()
        try:
            board = ModelBoard.remote()
            learner = LearnerActor.remote(self.learner_spec, board)
            collectors = {s.worker_id: CollectorActor.remote(s, board) for s in self.collector_specs}
            for w, a in collectors.items():
                self.status[w].records = ray.get(a.records.remote())
            start_total = sum(s.records for s in self.status.values())
            self._metric({"kind": "run_start", "workers": len(collectors), "interactions": start_total,
                          "per_worker": {w: s.records for w, s in self.status.items()}, "unix": time.time()})
            return self._drive(ray, learner, collectors, start_total, t_start)
        finally:
            ray.shutdown()

    def _drive(self, ray, learner, collectors: dict, start_total: int, t_start: float) -> dict[str, Any]:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        lp = self.cfg.loop
        total = int(lp.interactions)
        pending: dict[Any, tuple[str, int]] = {}

        def submit(w: int) -> None:
            pending[collectors[w].interact.remote()] = ("collector", w)

        for w, st in self.status.items():
            if st.records < st.quota:
                submit(w)
        pending[learner.tick.remote()] = ("learner", -1)
        learner_version, last_status = 0, time.time()
        old = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(total=total, initial=min(start_total, total), desc="interactions", disable=not lp.progress,
                   dynamic_ncols=True)
        try:
            while any(k == "collector" for k, _ in pending.values()):
                if lp.time_budget and time.time() - t_start > lp.time_budget and not self._stop:
                    tqdm.write(f"time budget of {lp.time_budget:.0f} s reached")
                    self._stop = True
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    kind, w = pending.pop(ref)
                    if kind == "learner":
                        try:
                            learner_version = ray.get(ref)["model_version"]
                        except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                            self._metric({"kind": "learner_restart", "error": _short(e), "unix": time.time()})
                            tqdm.write(f"learner actor died ({_short(e)}); Ray restarts it")
                            time.sleep(1.0)
                        except RayTaskError as e:  # a retrain or evaluation failed: logged, tried again next tick
                            self._metric({"kind": "learner_error", "error": _short(e), "unix": time.time()})
                            tqdm.write(f"learner: {_short(e)}; the collectors go on, the learner tries again")
                            time.sleep(5.0)
                        pending[learner.tick.remote()] = ("learner", -1)
                        continue
                    st = self.status[w]
                    try:
                        row = ray.get(ref)
                    except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                        if not st.killed_by_driver:
                            st.restarts += 1
                            self._metric({"kind": "worker_restart", "worker": w, "error": _short(e), "unix": time.time()})
                            tqdm.write(f"collector {w} died ({_short(e)}); Ray restarts it and it reopens its shard")
                        st.killed_by_driver = False
                        time.sleep(1.0)
                        if not self._stop:
                            submit(w)
                        continue
                    except RayTaskError as e:
                        st.failures += 1
                        self._metric({"kind": "worker_error", "worker": w, "error": _short(e), "failures": st.failures,
                                      "unix": time.time()})
                        if st.failures >= MAX_FAILURES:
                            tqdm.write(f"collector {w}: {st.failures} failures in a row, stopped: {_short(e)}")
                            ray.kill(collectors[w], no_restart=True)
                            continue
                        tqdm.write(f"collector {w} failed ({_short(e)}); restarting it")
                        ray.kill(collectors[w], no_restart=False)
                        st.restarts += 1
                        st.killed_by_driver = True
                        if not self._stop:
                            submit(w)
                        continue
                    if row is None:  # its quota is done
                        continue
                    st.failures, st.killed_by_driver = 0, False
                    st.records, st.model_version = row["shard_records"], row["model_version"]
                    st.interactions += 1
                    st.busy_s += row["seconds"]
                    now = time.time()
                    st.first_start = st.first_start or now - row["seconds"]
                    st.last_end = now
                    st.times.append(now)
                    self._metric(row)
                    bar.update(1)
                    bar.set_postfix_str(self._postfix(learner_version))
                    if not self._stop:
                        submit(w)
                if time.time() - last_status > STATUS_EVERY_S:
                    last_status = time.time()
                    self._metric({"kind": "fleet", "unix": last_status, "learner_version": learner_version,
                                  "workers": {w: {"records": s.records, "rate_per_s": s.rate(),
                                                  "model_version": s.model_version, "restarts": s.restarts}
                                              for w, s in self.status.items()}})
            for ref in list(pending):  # the learner's last tick
                try:
                    ray.get(ref)
                except Exception:  # noqa: BLE001 - a dead learner is restarted for finish()
                    pass
            tqdm.write("collectors done; the learner runs what is due and writes the final model")
            final = ray.get(learner.finish.remote())
            for a in collectors.values():
                try:
                    ray.get(a.close.remote())
                except Exception:  # noqa: BLE001 - a stopped worker has nothing to close
                    pass
        finally:
            bar.close()
            signal.signal(signal.SIGINT, old)
        wall = time.time() - t_start
        return self._summary(final, start_total, wall)

    def _postfix(self, learner_version: int) -> str:
        parts = [f"w{w}:{s.records}@{s.rate():.2f}/s v{s.model_version}" for w, s in sorted(self.status.items())]
        return " ".join(parts) + f" | learner v{learner_version}"

    def _summary(self, final: dict[str, Any], start_total: int, wall: float) -> dict[str, Any]:
        busy = sum(s.busy_s for s in self.status.values())
        acting = sum(s.last_end - s.first_start for s in self.status.values() if s.interactions)
        this_run = sum(s.interactions for s in self.status.values())
        out = {
            "interactions_total": final["records"], "interactions_this_run": this_run, "resumed_from": start_total,
            "workers": {w: {"records": s.records, "this_run": s.interactions, "restarts": s.restarts,
                            "model_version": s.model_version, "busy_s": s.busy_s}
                        for w, s in self.status.items()},
            "wall_s": wall,
            # share of the collectors' time between their first and last interaction spent outside one (model
            # swaps, waiting for the driver); start-up (Ray, pybullet, the camera) is not counted
            "robot_idle_fraction": 1.0 - busy / max(acting, 1e-9),
            "model_version": final["model_version"], "train_steps": final["train_steps"],
            "train_seconds": final["train_seconds"], "init": final.get("init"),
            "eval": {k: final["last_eval"].get(k) for k in ("AP50", "AP", "overlap_F", "boundary_F")
                     if k in final["last_eval"]},
            "baseline_depth_clustering": {k: final["baseline"].get(k) for k in ("AP50", "AP", "overlap_F", "boundary_F")
                                          if k in final["baseline"]},
            "run_dir": str(self.run_dir), "log": str(self.run_dir / "shards"),
            "model": str(self.run_dir / "model" / "segmenter.pt"), "metrics": str(self.metrics_path),
        }
        self._metric({"kind": "run_end", **{k: v for k, v in out.items() if k not in ("run_dir", "log", "model", "metrics")}})
        return out


def print_fleet_summary(s: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    rows = [("interactions (total / this run)", f"{s['interactions_total']} / {s['interactions_this_run']}")]
    for w, v in sorted(s["workers"].items()):
        rows.append((f"worker {w}: records / this run / restarts / model",
                     f"{v['records']} / {v['this_run']} / {v['restarts']} / v{v['model_version']}"))
    rows += [("wall time / robot idle fraction", f"{s['wall_s']:.0f} s / {s['robot_idle_fraction']:.3f}"),
             ("started from (learner.init)", s.get("init") or "-"),
             ("model version / train steps / train s",
              f"v{s['model_version']} / {s['train_steps']} / {s['train_seconds']:.0f}")]
    for k, v in s["eval"].items():
        rows.append((f"held-out {k}", f"{f(v)} (depth clustering {f(s['baseline_depth_clustering'].get(k))})"))
    rows += [("run directory", s["run_dir"]), ("interaction log (shards)", s["log"]),
             ("deployable model", s["model"]), ("metrics", s["metrics"])]
    w = max(len(k) for k, _ in rows)
    print("\nSummary (actor-learner)")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
