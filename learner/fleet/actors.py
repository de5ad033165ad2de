"""Ray actors of the actor-learner loop: thin wrappers around learner/fleet/workers.py.

- `ModelBoard`: holds the newest published model (version + bytes); the learner publishes, collectors
  pull between interactions (a parameter-server in one small actor, so a busy learner never blocks them).
- `CollectorActor`: a `CollectorWorker`; before every interaction it asks the board for a newer model
  and hot-swaps it. Restarted by Ray after a crash (`max_restarts`): `__init__` reopens its shard, which
  repairs a torn tail, and reloads its agent state.
- `LearnerActor`: a `LearnerWorker`; every `tick` runs what is due and publishes a new model version.

Every actor asks Ray for `num_cpus=0`: the machine's cores are shared by torch threads that the config
sets (`learner.num_threads` for the learner, one per collector), not by Ray's scheduler.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from learner.fleet.workers import CollectorSpec, CollectorWorker, LearnerSpec, LearnerWorker

RESTARTS = -1  # a killed actor always comes back; the driver stops a worker whose robot keeps failing


@ray.remote(num_cpus=0)
class ModelBoard:
    def __init__(self) -> None:
        self.version, self.payload = 0, None

    def publish(self, version: int, payload: bytes) -> None:
        if version > self.version:
            self.version, self.payload = int(version), payload

    def newer_than(self, version: int) -> tuple[int, bytes] | None:
        return (self.version, self.payload) if self.version > version and self.payload is not None else None


@ray.remote(num_cpus=0, max_restarts=RESTARTS, max_task_retries=0)
class CollectorActor:
    def __init__(self, spec: CollectorSpec, board: Any) -> None:
        self.worker = CollectorWorker(spec)
        self.board = board

    def pid(self) -> int:
        return os.getpid()

    def records(self) -> int:
        return self.worker.done

    def interact(self) -> dict[str, Any] | None:
        """Hot-swap the newest published model, then one interaction (None: this worker's quota is done)."""
        newer = ray.get(self.board.newer_than.remote(self.worker.collector.model_version))
        if newer is not None:
            self.worker.set_model(newer[1])
        return self.worker.interact()

    def close(self) -> None:
        self.worker.close()


@ray.remote(num_cpus=0, max_restarts=RESTARTS, max_task_retries=0)
class LearnerActor:
    def __init__(self, spec: LearnerSpec, board: Any) -> None:
        self.worker = LearnerWorker(spec)
        self.board = board
        self._publish()  # a restarted learner (or a resumed run) publishes its checkpoint's model at once

    def _publish(self) -> None:
        payload = self.worker.published()
        if payload is not None:
            ray.get(self.board.publish.remote(self.worker.version, payload))

    def pid(self) -> int:
        return os.getpid()

    def tick(self) -> dict[str, Any]:
        out = self.worker.tick()
        if out["changed"]:
            self._publish()
        return out

    def finish(self) -> dict[str, Any]:
        out = self.worker.finish()
        self._publish()
        return out
