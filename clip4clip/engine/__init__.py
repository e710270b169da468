"""The training and evaluation engine: training loop, jobs built from the config, checkpoint writing, DDP."""
