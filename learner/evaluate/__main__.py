"""`python -m learner.evaluate`: evaluate a trained segmenter on exported scenes (learner/evaluate/cli.py)."""

from learner.evaluate.cli import main

raise SystemExit(main())
