"""Evaluation: held-out-family reports, baselines on the same splits, metrics, thresholds and scoring of new data."""
