"""Interaction records and `metrics.jsonl` rows as a Rerun recording: the one conversion behind
`python -m data.inspect RUN --rerun [OUT.rrd]` (a log, afterwards) and the loop's live view
(`loop.viz=rerun`, `learner/loop/interactive.py`). Needs the optional extra `viz` (rerun-sdk, pinned
to RERUN_REQUIREMENT: Rerun's Python API moves between minor versions); without it `require_rerun`
raises `RerunUnavailable` naming the extra.

Timelines: `interaction` (the record index; training and evaluation rows sit at the index of the
last interaction they include) and `wall_time` (the record's `t_start`); training rows also carry
`train_step`. Entities (world = robot base frame, metres, z up; camera = OpenCV axes):

| entity | archetype | content |
| --- | --- | --- |
| `world` | ViewCoordinates RIGHT_HAND_Z_UP (static) | |
| `world/camera` | Transform3D + Pinhole | world-from-camera pose; K (principal point + 0.5 px: Rerun puts pixel centres at +0.5, this project at 0), W x H |
| `world/camera/{before,after}/rgb` | Image | the two RGB captures |
| `world/camera/{before,after}/depth` | DepthImage (uint16 mm, meter=1000) | depth along camera z; the 3D view draws the before depth as a point cloud |
| `world/camera/hypotheses` | SegmentationImage | 0 = none, k + 1 = hypothesis k (higher scores drawn over lower); cleared when there is none |
| `world/camera/chosen` | SegmentationImage | 1 = the chosen hypothesis; cleared when none was chosen |
| `world/camera/mask` | SegmentationImage | 1 = the extracted (frame-differenced) mask |
| `world/camera/pixel` | Points2D | the action pixel |
| `world/action/target` | Points3D | `target_robot` (cleared when NaN) |
| `world/action/push` | Arrows3D | poke: `push_length` along `angle` in the table plane, from the target |
| `world/action/grasp` | Arrows3D + LineStrips3D | grasp: approach from above and the gripper-yaw line |
| `interaction/summary` | TextDocument (markdown) | primitive, label, reason, model version, hypotheses, grasp outcome |
| `interaction/log` | TextLog | one line per interaction (level INFO positive, WARN negative, ERROR invalid) |
| `interaction/{positive,positive_rate,model_version,hypotheses,mask_area_px}` | Scalars | positive_rate: the last ROLLING records |
| `interaction/{seconds,hit_object_gt,hit_rate}` | Scalars | from the loop's interaction rows (hit: sim ground truth, evaluation only) |
| `metrics/train/<key>` | Scalars | training rows: loss and its terms, lr |
| `metrics/heldout/<key>/{model,depth_clustering}` | Scalars | evaluation rows next to the baseline row |
| `metrics/heldout/model_version` | Scalars | the model version each evaluation scored |

A default blueprint lays out the 3D view, the 2D views, the text and the learning curves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.schema import InteractionRecord, Label

RERUN_REQUIREMENT = "rerun-sdk>=0.41,<0.42"
TESTED_MINOR = (0, 41)
INSTALL_HINT = ("rerun-sdk is not installed; it is the optional extra `viz`: "
                "`.venv/bin/pip install -e '.[viz]'` or `bash scripts/setup.sh viz`")  # fmt: skip
APP_ID = "interactive-seg"
ROLLING = 20  # records in the rolling positive / hit rates
HELDOUT_PLOTS = ("AP50", "AP", "overlap_F")  # the blueprint's held-out plots (every numeric key is logged)
CAMERA = "world/camera"
VIEWER_URL_PREFIXES = ("rerun://", "rerun+http://", "rerun+https://")

LABEL_LEVEL = {Label.POSITIVE: "INFO", Label.NEGATIVE: "WARN", Label.INVALID: "ERROR"}
MASK_COLOUR = (0, 230, 60)
CHOSEN_COLOUR = (255, 40, 220)
ACTION_COLOUR = (255, 30, 30)
BASELINE_COLOUR = (130, 130, 130)


class RerunUnavailable(ImportError):
    """rerun-sdk is missing: the message says which extra installs it."""


def require_rerun() -> Any:
    """The `rerun` module, or RerunUnavailable naming the `viz` extra. Warns outside the tested minor."""
    try:
        import rerun as rr
    except ImportError as e:
        raise RerunUnavailable(f"{INSTALL_HINT} ({e})") from None
    try:
        minor = tuple(int(x) for x in rr.__version__.split(".")[:2])
    except ValueError:
        minor = None
    if minor != TESTED_MINOR:
        warnings.warn(f"rerun-sdk {rr.__version__} is installed; this code is tested with {RERUN_REQUIREMENT}",
                      stacklevel=2)  # fmt: skip
    return rr


def recording_id_for(run_dir: str | os.PathLike) -> str:
    """One recording id per run directory: the live files of every session and an offline conversion
    of the same run merge when opened together in the viewer."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "interactive-seg:" + str(Path(run_dir).resolve())))


# ----------------------------------------------------------------------------- the conversion


class RerunView:
    """Logs interaction records and metrics rows to one `rerun.RecordingStream`."""

    def __init__(self, stream: Any) -> None:
        self.rr = require_rerun()
        self.stream = stream
        self.interaction: int | None = None  # where training / evaluation rows go on the timeline
        self.baseline: dict[str, Any] = {}
        self._positives: deque[int] = deque(maxlen=ROLLING)
        self._hits: deque[int] = deque(maxlen=ROLLING)
        self._styled: set[str] = set()
        stream.set_log_time_enabled(False)  # our own timelines only: a recording of a log is deterministic
        stream.set_log_tick_enabled(False)
        self._log_static()

    # ------------------------------------------------------------------ static
    def _log_static(self) -> None:
        rr, s = self.rr, self.stream
        s.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        palette = _palette(65)
        s.log(f"{CAMERA}/hypotheses", rr.AnnotationContext(
            [rr.AnnotationInfo(id=0, label="none", color=(0, 0, 0, 0))]
            + [rr.AnnotationInfo(id=k + 1, label=f"hypothesis {k}", color=tuple(palette[k])) for k in range(64)]),
            static=True)  # fmt: skip
        s.log(f"{CAMERA}/chosen", rr.AnnotationContext(
            [rr.AnnotationInfo(id=0, label="none", color=(0, 0, 0, 0)),
             rr.AnnotationInfo(id=1, label="chosen hypothesis", color=CHOSEN_COLOUR)]), static=True)  # fmt: skip
        s.log(f"{CAMERA}/mask", rr.AnnotationContext(
            [rr.AnnotationInfo(id=0, label="none", color=(0, 0, 0, 0)),
             rr.AnnotationInfo(id=1, label="extracted mask", color=MASK_COLOUR)]), static=True)  # fmt: skip

    def _style(self, path: str, name: str, colour: tuple[int, int, int] | None = None, points: bool = False) -> None:
        if path in self._styled:
            return
        self._styled.add(path)
        rr = self.rr
        parts = [rr.SeriesLines(names=[name], **({"colors": [colour]} if colour else {}))]
        if points:
            parts.append(rr.SeriesPoints(names=[name], **({"colors": [colour]} if colour else {})))
        self.stream.log(path, *parts, static=True)

    def _scalar(self, path: str, value: Any, name: str | None = None, **style: Any) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(v):
            return
        self._style(path, name or path.rsplit("/", 1)[-1], **style)
        self.stream.log(path, self.rr.Scalars(v))

    # ------------------------------------------------------------------ one interaction
    def record(self, index: int, rec: InteractionRecord) -> None:
        """Log interaction `index` (all entities of the module docstring under `world/` and `interaction/`)."""
        rr, s = self.rr, self.stream
        self.interaction = int(index)
        s.set_time("interaction", sequence=int(index))
        s.set_time("wall_time", timestamp=float(rec.t_start))
        H, W = rec.height, rec.width

        K = np.array(rec.K, dtype=np.float64)
        K[0, 2] += 0.5  # pixel centres: ours at integer coordinates, Rerun's at +0.5
        K[1, 2] += 0.5
        T = np.asarray(rec.camera_pose, dtype=np.float64)
        s.log(CAMERA, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]),
              rr.Pinhole(image_from_camera=K, resolution=[W, H], image_plane_distance=0.15))  # fmt: skip
        s.log(f"{CAMERA}/before/rgb", rr.Image(np.ascontiguousarray(rec.rgb_before)))
        s.log(f"{CAMERA}/after/rgb", rr.Image(np.ascontiguousarray(rec.rgb_after)))
        s.log(f"{CAMERA}/before/depth", rr.DepthImage(depth_mm(rec.depth_before), meter=1000.0))
        s.log(f"{CAMERA}/after/depth", rr.DepthImage(depth_mm(rec.depth_after), meter=1000.0))

        # segmentation images; an empty one is a Clear (cheaper, and the previous record's is not shown)
        hyps = np.asarray(rec.hypotheses, dtype=bool)
        scores = np.asarray(rec.hypothesis_scores, dtype=np.float64)
        if len(hyps):
            seg = np.zeros((H, W), np.uint8)
            for k in np.argsort(np.nan_to_num(scores, nan=-np.inf), kind="stable"):  # best on top
                seg[hyps[k]] = k + 1
            s.log(f"{CAMERA}/hypotheses", rr.SegmentationImage(seg, opacity=0.5))
        else:
            s.log(f"{CAMERA}/hypotheses", rr.Clear(recursive=False))
        k = int(rec.chosen_hypothesis)
        if 0 <= k < len(hyps):
            s.log(f"{CAMERA}/chosen", rr.SegmentationImage(hyps[k].view(np.uint8), opacity=0.6))
        else:
            s.log(f"{CAMERA}/chosen", rr.Clear(recursive=False))
        s.log(f"{CAMERA}/mask", rr.SegmentationImage(np.asarray(rec.mask, dtype=bool).view(np.uint8), opacity=0.6))

        u, v = (float(x) for x in np.asarray(rec.pixel, dtype=np.float64))
        if math.isfinite(u) and math.isfinite(v):
            s.log(f"{CAMERA}/pixel", rr.Points2D([[u + 0.5, v + 0.5]], radii=[max(2.0, W / 100)],
                                                 colors=[ACTION_COLOUR], labels=[rec.primitive]))  # fmt: skip
        else:
            s.log(f"{CAMERA}/pixel", rr.Clear(recursive=False))
        self._log_action(rec)

        label = Label(int(rec.label))
        s.log("interaction/log", rr.TextLog(_line(index, rec), level=LABEL_LEVEL[label]))
        s.log("interaction/summary", rr.TextDocument(_markdown(index, rec), media_type=rr.MediaType.MARKDOWN))
        self._positives.append(int(label == Label.POSITIVE))
        if label != Label.INVALID:
            self._scalar("interaction/positive", float(label == Label.POSITIVE), points=True)
        self._scalar("interaction/positive_rate", np.mean(self._positives), f"positive rate (last {ROLLING})")
        self._scalar("interaction/model_version", rec.model_version, "model version")
        self._scalar("interaction/hypotheses", len(hyps), "hypotheses")
        self._scalar("interaction/mask_area_px", int(np.count_nonzero(rec.mask)), "mask area [px]")

    def _log_action(self, rec: InteractionRecord) -> None:
        rr, s = self.rr, self.stream
        t = np.asarray(rec.target_robot, dtype=np.float64)
        if not np.all(np.isfinite(t)):
            for e in ("target", "push", "grasp"):
                s.log(f"world/action/{e}", rr.Clear(recursive=False))
            return
        s.log("world/action/target", rr.Points3D([t], radii=[0.006], colors=[ACTION_COLOUR],
                                                 labels=[f"{rec.primitive} target"]))  # fmt: skip
        d = np.array([math.cos(rec.angle), math.sin(rec.angle), 0.0])
        if rec.primitive == "poke":
            s.log("world/action/push", rr.Arrows3D(origins=[t], vectors=[d * max(float(rec.push_length), 0.01)],
                                                   radii=[0.004], colors=[(255, 150, 0)], labels=["push"]))  # fmt: skip
            s.log("world/action/grasp", rr.Clear(recursive=False))
        else:
            up = np.array([0.0, 0.0, 0.08])
            s.log("world/action/grasp", rr.Arrows3D(origins=[t + up], vectors=[-up], radii=[0.003],
                                                    colors=[(0, 160, 255)], labels=["grasp"]),
                  rr.LineStrips3D([[t - 0.04 * d, t + 0.04 * d]], radii=[0.003], colors=[(0, 160, 255)]))  # fmt: skip
            s.log("world/action/push", rr.Clear(recursive=False))

    # ------------------------------------------------------------------ metrics.jsonl rows
    def metrics_row(self, row: dict[str, Any]) -> None:
        """Log one metrics.jsonl row: `interaction`, `train`, `eval` (next to the last `baseline`)."""
        s, kind = self.stream, row.get("kind")
        if kind == "baseline":
            self.baseline = dict(row)
            return
        if kind == "interaction":
            i = int(row["index"])
            s.set_time("interaction", sequence=i)
            self._scalar("interaction/seconds", row.get("seconds"), "interaction seconds")
            if "hit_object_gt" in row:
                self._hits.append(int(bool(row["hit_object_gt"])))
                self._scalar("interaction/hit_object_gt", float(bool(row["hit_object_gt"])), points=True)
                self._scalar("interaction/hit_rate", np.mean(self._hits), f"object-hit rate (last {ROLLING}, sim GT)")
            if self.interaction is None or i > self.interaction:
                self.interaction = i
            return
        if kind == "train":
            s.set_time("interaction", sequence=max(self.interaction or 0, 0))
            s.set_time("train_step", sequence=int(row.get("step", 0)))
            for k, v in row.items():
                if k not in ("kind", "step", "model_version", "elapsed_s"):
                    self._scalar(f"metrics/train/{k}", v, k)
            s.disable_timeline("train_step")
            return
        if kind == "eval":
            at = int(row["interactions"]) - 1 if "interactions" in row else (self.interaction or 0)
            s.set_time("interaction", sequence=max(at, 0))
            for k, v in row.items():
                if k in ("kind", "interactions", "model_version"):
                    continue
                self._scalar(f"metrics/heldout/{k}/model", v, "model", points=True)
                if k in self.baseline:
                    base = str(self.baseline.get("name", "baseline")).replace("_", " ")
                    self._scalar(f"metrics/heldout/{k}/{self.baseline.get('name', 'baseline')}", self.baseline[k],
                                 base, colour=BASELINE_COLOUR, points=True)  # fmt: skip
            self._scalar("metrics/heldout/model_version", row.get("model_version"), "model version", points=True)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
        self.stream.disconnect()


def blueprint() -> Any:
    """The default layout: 3D scene + text | 2D camera views | learning curves."""
    import rerun.blueprint as rrb

    cam = f"/{CAMERA}"
    views_2d = rrb.Grid(
        rrb.Spatial2DView(name="before + hypotheses", origin=cam,
                          contents=[f"{cam}/before/rgb", f"{cam}/hypotheses", f"{cam}/pixel"]),
        rrb.Spatial2DView(name="before + chosen hypothesis", origin=cam,
                          contents=[f"{cam}/before/rgb", f"{cam}/chosen", f"{cam}/pixel"]),
        rrb.Spatial2DView(name="after + extracted mask", origin=cam,
                          contents=[f"{cam}/after/rgb", f"{cam}/mask", f"{cam}/pixel"]),
        rrb.Spatial2DView(name="depth before", origin=cam, contents=[f"{cam}/before/depth"]),
        grid_columns=2,
    )  # fmt: skip
    curves = rrb.Tabs(
        rrb.Grid(*(rrb.TimeSeriesView(name=f"held-out {k}", origin=f"/metrics/heldout/{k}") for k in HELDOUT_PLOTS),
                 rrb.TimeSeriesView(name="positive / hit rate", contents=["/interaction/positive_rate",
                                                                          "/interaction/hit_rate"]),
                 name="learning"),
        rrb.TimeSeriesView(name="training loss", origin="/metrics/train", contents=["+ $origin/**", "- $origin/lr"]),
        rrb.TextLogView(name="interactions", origin="/interaction/log"),
    )  # fmt: skip
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial3DView(name="world (robot base frame)", origin="/world",
                                  contents=["+ $origin/**", f"- {cam}/after/**"],
                                  eye_controls=rrb.EyeControls3D(position=(-0.35, -0.75, 0.95),
                                                                 look_target=(0.5, 0.0, 0.0), eye_up=(0, 0, 1))),
                rrb.TextDocumentView(name="interaction", origin="/interaction/summary"),
                row_shares=[3, 1],
            ),
            rrb.Vertical(views_2d, curves, row_shares=[3, 2]),
            column_shares=[2, 3],
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="collapsed", timeline="interaction", fps=2.0),
    )  # fmt: skip


def depth_mm(depth_m: np.ndarray) -> np.ndarray:
    """float metres -> uint16 millimetres for the viewer, in float32 (~5x faster than the log's exact
    `data.schema.depth_to_mm`; equal but for rare off-by-one mm at exact half millimetres): 0, NaN,
    negative and infinite depths -> 0 (missing), beyond 65.535 m -> 65535."""
    d = np.asarray(depth_m, dtype=np.float32) * np.float32(1000.0)
    d[~np.isfinite(d) | (d < 0)] = 0
    np.rint(d, out=d)
    np.minimum(d, 65535, out=d)
    return d.astype(np.uint16)


def _palette(n: int) -> np.ndarray:
    """n distinct RGB colours (golden-ratio hues)."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * k) % 1.0, 0.75, 0.95)]
                     for k in range(n)], dtype=np.uint8)  # fmt: skip


def _line(index: int, rec: InteractionRecord) -> str:
    label = Label(int(rec.label)).name.lower()
    reason = f" ({rec.label_reason})" if rec.label_reason else ""
    k = int(rec.chosen_hypothesis)
    chosen = f"hypothesis {k} of {rec.num_hypotheses}" if k >= 0 else f"no hypothesis ({rec.num_hypotheses} shown)"
    grasp = {1: ", grasp held", 0: ", grasp failed"}.get(int(rec.grasp_success), "")
    return f"#{index} {rec.primitive} -> {label}{reason}{grasp}; model v{int(rec.model_version)}; {chosen}"


def _markdown(index: int, rec: InteractionRecord) -> str:
    label = Label(int(rec.label)).name.lower()
    k = int(rec.chosen_hypothesis)
    score = f" (score {float(rec.hypothesis_scores[k]):.3f})" if 0 <= k < rec.num_hypotheses else ""
    t = np.asarray(rec.target_robot, dtype=np.float64)
    target = ", ".join(f"{x:.3f}" for x in t) if np.all(np.isfinite(t)) else "none"
    rows = [
        ("interaction", f"#{index}"),
        ("primitive", rec.primitive),
        ("label", f"**{label}**" + (f" ({rec.label_reason})" if rec.label_reason else "")),
        ("model version", str(int(rec.model_version))),
        ("hypotheses", f"{rec.num_hypotheses}, chosen: {k if k >= 0 else 'none'}{score}"),
        ("pixel (u, v)", ", ".join(f"{x:.1f}" for x in np.asarray(rec.pixel, dtype=np.float64))),
        ("target (robot frame, m)", target),
        ("angle / push length", f"{math.degrees(rec.angle):.0f} deg / {rec.push_length:.3f} m"),
        ("grasp", {1: "held", 0: "failed"}.get(int(rec.grasp_success), "-")),
        ("mask area", f"{int(np.count_nonzero(rec.mask))} px"),
        ("robot", rec.robot_kind),
        ("seconds", f"{rec.t_end - rec.t_start:.2f}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (missing file: []; a torn last line or a non-object line is skipped)."""
    p = Path(path)
    return _json_rows(p.read_bytes().splitlines()) if p.is_file() else []


def _json_rows(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    """The JSON objects among metrics.jsonl lines (a torn or non-object line is skipped)."""
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def metrics_by_interaction(rows: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Rows keyed by the interaction they follow: an interaction row by its index, an evaluation row by
    `interactions - 1`, any other row by the last interaction row before it (-1 before any)."""
    out: dict[int, list[dict[str, Any]]] = {}
    cur = -1
    for row in rows:
        kind = row.get("kind")
        if kind == "interaction" and "index" in row:
            cur = int(row["index"])
            key = cur
        elif kind == "eval" and "interactions" in row:
            key = int(row["interactions"]) - 1
        else:
            key = cur
        out.setdefault(key, []).append(row)
    return out


class MetricsTail:
    """New complete lines of a growing metrics.jsonl (the live view's source of metrics rows)."""

    def __init__(self, path: str | os.PathLike, *, from_end: bool = False) -> None:
        self.path = Path(path)
        self.offset = 0
        if from_end and self.path.is_file():
            self.offset = self.path.stat().st_size

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # complete lines only: a line being written stays for next time
        self.offset += end
        return _json_rows(data[:end].splitlines())


# ----------------------------------------------------------------------------- sinks


def has_display() -> bool:
    """Can the native viewer open a window here?"""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def viewer_executable() -> str | None:
    """The native viewer shipped with rerun-sdk (`rerun` next to this Python, or on PATH)."""
    here = Path(sys.executable).parent / "rerun"
    return str(here) if here.exists() else shutil.which("rerun")


def stop_serving(view: RerunView, timeout_s: float = 10.0) -> bool:
    """Close a served recording and shut Rerun down, waiting at most timeout_s seconds. False when the
    shutdown did not finish: Rerun's web and gRPC servers can wait on a viewer connection that is still
    open (rerun-io/rerun#1843); the caller then leaves without them (nothing is lost: a served recording
    lives only in this process, the log on disk is never written)."""
    import threading

    rr = require_rerun()

    def close() -> None:
        view.close()
        rr.rerun_shutdown()

    closer = threading.Thread(target=close, name="rerun-shutdown", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        return False
    rr.unregister_shutdown()  # done: the at-exit handler would only wait on it again
    return True


def open_stream(target: str | os.PathLike, *, recording_id: str | None = None, name: str | None = None,
                grpc_port: int = 9876, web_port: int = 9090) -> tuple[Any, str]:
    """A RecordingStream writing to `target`, and a sentence saying where the data goes.

    target: a path (a `.rrd` file; its directory is created), `spawn` (the native viewer, which needs a
    display), `serve` (an in-process gRPC server plus the web viewer on `web_port`; alive while this
    process runs) or a `rerun+http://...` URL of a running viewer. The default blueprint goes with it.
    """
    rr = require_rerun()
    stream = rr.RecordingStream(APP_ID, recording_id=recording_id)
    if name:
        stream.send_recording_name(name)
    bp = blueprint()
    t = str(target)
    if t == "spawn":
        exe = viewer_executable()
        if exe is None or not has_display():
            raise RuntimeError("cannot spawn the Rerun viewer here (" + ("no display" if exe else "no `rerun` "
                               "executable") + "): write a file (OUT.rrd) or use `serve` and open the web viewer")  # fmt: skip
        rr.spawn(port=grpc_port, executable_path=exe, default_blueprint=bp, recording=stream)
        return stream, f"streaming to the Rerun viewer spawned on port {grpc_port}"
    if t == "serve":
        url = stream.serve_grpc(grpc_port=grpc_port, default_blueprint=bp)
        rr.serve_web_viewer(web_port=web_port, open_browser=False, connect_to=url)
        return stream, (f"serving: open http://127.0.0.1:{web_port}/?url={url} in a browser (web viewer), or run "
                        f"`rerun --connect {url}` (native viewer); the data stays available while this process runs")  # fmt: skip
    if t.startswith(VIEWER_URL_PREFIXES):
        stream.connect_grpc(t, default_blueprint=bp)
        return stream, f"streaming to the Rerun viewer at {t}"
    path = Path(t)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream.save(path, default_blueprint=bp)
    return stream, f"writing {path} (open it with `.venv/bin/rerun {path}`)"


def check_live_target(target: str) -> str | None:
    """Why `target` (a `loop.viz_path`) cannot work here, or None."""
    if target == "spawn":
        if viewer_executable() is None:
            return "spawn: no `rerun` viewer executable found (it comes with rerun-sdk, the `viz` extra)"
        if not has_display():
            return "spawn: no display (DISPLAY / WAYLAND_DISPLAY unset); use serve, a .rrd path or a viewer URL"
    elif target.startswith(VIEWER_URL_PREFIXES) or target in ("", "serve"):
        return None
    elif Path(target).suffix != ".rrd":
        return f"expected '', an .rrd path, spawn, serve or a rerun+http:// URL, got {target!r}"
    return None


def next_free_path(path: str | os.PathLike) -> Path:
    """`path` if nothing is there, else `stem.1.rrd`, `stem.2.rrd`, ...: a resumed run keeps earlier files."""
    p = Path(path)
    k = 0
    while p.exists():
        k += 1
        p = Path(path).with_name(f"{Path(path).stem}.{k}{Path(path).suffix}")
    return p


# ----------------------------------------------------------------------------- a whole log (offline)


def write_log(log: Any, view: RerunView, indices: range, metrics: list[dict[str, Any]] | None = None,
              *, progress: Any = None) -> int:
    """Log records `indices` of an open InteractionLog with the metrics rows that follow each of them;
    baseline rows are taken wherever they are (evaluations inside the range are shown next to them).
    Returns the number of records logged."""
    rows = metrics_by_interaction(metrics or [])
    for r in metrics or []:
        if r.get("kind") == "baseline":
            view.metrics_row(r)
            break
    n = 0
    for i in indices:
        view.record(i, log[i])
        for row in rows.get(i, []):
            view.metrics_row(row)
        n += 1
        if progress is not None:
            progress(n)
    return n


# ----------------------------------------------------------------------------- live (the loop)


class LiveRerun:
    """The loop's live view: each committed record, then the metrics rows appended since (`poll`).

    Costs are measured in the calling thread (`seconds`); Rerun encodes and writes in its own threads.
    """

    def __init__(self, target: str | os.PathLike, run_dir: str | os.PathLike, metrics_path: str | os.PathLike,
                 *, grpc_port: int = 9876, web_port: int = 9090) -> None:
        self.seconds = 0.0
        t0 = time.perf_counter()
        self.stream, self.where = open_stream(target, recording_id=recording_id_for(run_dir),
                                              name=f"{Path(run_dir).name} (live)", grpc_port=grpc_port,
                                              web_port=web_port)  # fmt: skip
        self.view = RerunView(self.stream)
        self.tail = MetricsTail(metrics_path)
        for row in self.tail.read_new():  # rows of earlier sessions: only the baseline is kept
            if row.get("kind") == "baseline":
                self.view.metrics_row(row)
        self.seconds += time.perf_counter() - t0

    @classmethod
    def for_run(cls, viz_path: str, run_dir: str | os.PathLike, metrics_path: str | os.PathLike) -> LiveRerun:
        """The loop's `loop.viz_path`: "" = RUN_DIR/rerun.rrd, or an .rrd path; an existing file is kept (a
        resumed run writes rerun.1.rrd, rerun.2.rrd, ...). `spawn`, `serve` and URLs as in `open_stream`."""
        target: str | Path = viz_path
        if not (viz_path in ("spawn", "serve") or viz_path.startswith(VIEWER_URL_PREFIXES)):
            target = next_free_path(Path(viz_path) if viz_path else Path(run_dir) / "rerun.rrd")
        return cls(target, run_dir, metrics_path)

    def record(self, index: int, rec: InteractionRecord) -> float:
        t0 = time.perf_counter()
        self.view.record(index, rec)
        dt = time.perf_counter() - t0
        self.seconds += dt
        return dt

    def poll(self) -> float:
        t0 = time.perf_counter()
        for row in self.tail.read_new():
            self.view.metrics_row(row)
        dt = time.perf_counter() - t0
        self.seconds += dt
        return dt

    def close(self) -> None:
        self.poll()
        self.view.close()


# ----------------------------------------------------------------------------- reading a recording back


def read_recording(path: str | os.PathLike) -> Iterator[Any]:
    """The chunks of an .rrd file's first recording (rerun.chunk.Chunk: entity_path, timeline_names,
    to_record_batch())."""
    require_rerun()
    from rerun.chunk import RrdReader

    yield from RrdReader(str(path)).stream()
