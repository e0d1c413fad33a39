"""The machinery that trains and evaluates a DMN: the trainer, the evaluator and its metrics,
losses, distributed setup, plots, and the ``dmn-train`` / ``dmn-eval`` CLIs.

Imports ``dmn_model`` (the network) and ``dmn_data`` (the shard stream); neither imports this.
"""
