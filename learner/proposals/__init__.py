"""Frames and network heads -> object hypotheses, numpy only (no torch): the input builder (frame.py),
the support plane (plane.py), ProposalConfig (config.py), the pipeline (pipeline.py, cleaning.py), samplers
and distributional modes (tta.py, mask_sets.py) and the Segmenter over any backend (segmenter.py)."""
