"""`python -m learner.model`: forward / training-step throughput of the default network (network.benchmark)."""

import json

from learner.model.network import benchmark

print(json.dumps({k: round(v, 1) for k, v in benchmark().items()}))
