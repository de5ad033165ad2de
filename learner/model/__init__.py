"""The torch segmenter: the network (network.py), checkpoints (checkpoint.py) and the torch backend of
the one proposal pipeline (backend.py)."""
