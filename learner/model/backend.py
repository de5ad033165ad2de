"""A torch `PointSegmenter` as a backend of the one proposal pipeline (`learner.proposals.segmenter`).

    seg = torch_segmenter(model)                   # any frame size; net_size=(240, 320) resizes first
    inst = seg.predict(rgb, depth, K)

The backend only runs the network (no gradient, eval mode) and hands its heads to the numpy
pipeline, so the agent, evaluation and the benchmarks get exactly what the exported ONNX model gives.
MC dropout multiplies the head trunk's output by the pipeline's per-channel factors with a forward
hook, as the exported MC graph does.
"""

from __future__ import annotations

import numpy as np
import torch

from learner.model.network import PointSegmenter
from learner.proposals.config import ProposalConfig
from learner.proposals.frame import InputSpec
from learner.proposals.pipeline import HeadSpec
from learner.proposals.segmenter import Segmenter

MC_MODULE = "trunk"  # the module whose output MC dropout scales (the exported MC graph's too)


class TorchBackend:
    """`learner.proposals.segmenter.Backend` for a PointSegmenter (CPU or the model's device)."""

    def __init__(self, model: PointSegmenter, input_size: tuple[int, int] | None = None,
                 spec: InputSpec | None = None):
        self.model = model
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.spec = spec or InputSpec()
        c = model.config
        self.head = HeadSpec(int(c.embed_dim), int(c.dyn_hidden), float(c.coord_scale))
        trunk_ch = c.head_width if c.head_convs > 0 else c.fpn_width
        self.mc_shape: tuple[int, ...] | None = (1, int(trunk_ch), 1, 1)

    @property
    def latent_weight(self) -> np.ndarray | None:
        """(Kp, Z) of a latent model (read at every call: the trainer updates the model in place)."""
        if int(getattr(self.model.config, "latent_dim", 0)) <= 0:
            return None
        return self.model.latent_proj.weight.detach().cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def run(self, x: np.ndarray, trunk_scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        m = self.model.eval()
        dev = next(m.parameters()).device
        handle = None
        if trunk_scale is not None:
            scale = torch.from_numpy(np.ascontiguousarray(trunk_scale, np.float32)).to(dev)
            handle = getattr(m, MC_MODULE).register_forward_hook(lambda _m, _i, o: o * scale)
        try:
            out = m(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev))
        finally:
            if handle is not None:
                handle.remove()
        names = ("objectness", "features", "kernels") + (("prior_logvar",) if "prior_logvar" in out else ())
        return {k: out[k].float().cpu().numpy() for k in names}


def torch_segmenter(model: PointSegmenter, proposals: ProposalConfig | None = None,
                    net_size: tuple[int, int] | None = None, version: int | None = None) -> Segmenter:
    """The one pipeline over a torch model. net_size: the (H', W') the network runs at (frames are
    resized, masks come back at the frame's size); None: the frame's own size."""
    return Segmenter(TorchBackend(model, net_size), proposals, version)
