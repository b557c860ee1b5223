"""Training, over tensors in memory: the configuration and recipe rule (config.py), data
parallelism across cores (parallel.py), one update (update.py: a batch to new weights), the
trainer that drives updates over epochs and writes no file (trainer.py), and the metrics it
measures (metrics.py)."""
