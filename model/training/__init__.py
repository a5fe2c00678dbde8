"""Layer 4: training and evaluation, on top of the inference runtime.

Datasets and synthetic data, the training loop, ``riir evaluate`` (which scores a model
through the very engine that serves it) and the paper's experiments. Imports
``worker.inference``, ``model.networks`` and ``conventions``.
"""
