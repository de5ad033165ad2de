"""Deploying the segmenter: ONNX export + model card (`learner.deploy.export`), the torch-free runtime
(`learner.deploy.runtime`), prediction on files (`learner.deploy.predict`) and the latency bench
(`learner.deploy.bench`); `python -m learner.deploy` is `learner.deploy.cli`. See docs/deploy.md.

This package module stays torch-free (the runtime and `predict` run without torch)."""


class DeployError(Exception):
    """A user-facing problem (the message names the file); the CLI prints it and exits with 2."""
