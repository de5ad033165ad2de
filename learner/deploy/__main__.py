"""`python -m learner.deploy`: export / predict / bench (learner/deploy/cli.py)."""

from learner.deploy.cli import main

raise SystemExit(main())
