"""`python -m learner.train`: train the segmenter on a log or on scenes (learner/train/trainer.py)."""

from learner.train.trainer import main

raise SystemExit(main())
