"""Training module: datasets, synthetic data, training and evaluation commands."""
