"""How much training a log gets: optimiser steps that grow with the number of logged interactions.

A fixed step budget starves a larger log: at 1000 steps of 6 images, 500 interactions are seen 12 times
each, 2000 only 3 times, and the 2000-interaction model came out worse (docs/benchmarks.md, "bench_curve,
2000 interactions"). `TrainingEffort` keeps the number of passes over the log fixed instead, within a
floor (small logs still get a full schedule: warm-up and cosine decay run over all the steps) and a
ceiling (the time budget: about 0.45 s a step at 320x240 on 2 cores).

    steps = clip(round(passes * n_records / batch_size), min_steps, max_steps)

One pass = as many sampled training images as the log has records (interaction frames, their
pseudo-sequence frames and negatives all count as images). The numbers were chosen on val
(docs/benchmarks.md, "Training effort that scales with the log").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingEffort:
    """passes: sampled images per logged record; min_steps / max_steps: the clip (optimiser steps)."""

    passes: float = 9.0
    min_steps: int = 1000
    max_steps: int = 3000

    def validate(self) -> None:
        if not self.passes > 0:
            raise ValueError(f"passes must be > 0, got {self.passes}")
        if self.min_steps < 1 or self.max_steps < self.min_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")

    def steps(self, n_records: int, batch_size: int) -> int:
        """Optimiser steps for a log of `n_records` records at `batch_size` images a step."""
        self.validate()
        if n_records < 0 or batch_size < 1:
            raise ValueError(f"need n_records >= 0 and batch_size >= 1, got {n_records}, {batch_size}")
        wanted = round(self.passes * n_records / batch_size)
        return int(min(max(wanted, self.min_steps), self.max_steps))
