"""The actor-learner loop on Ray (`python run_loop.py robot=sim loop.workers=N`, the `ray` extra).

workers.py: the collector and the learner as plain objects; actors.py: their Ray actors and the model
board; driver.py: the process that starts them, writes the metrics and the progress bar. See docs/scale.md.
"""
