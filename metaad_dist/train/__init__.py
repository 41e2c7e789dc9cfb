"""Training: the one entry point (api.fit), setup, the local loop, Ray Train driver and workers, fusion, checkpoints, stored runs."""
