"""The PyTorch package: the networks (``model.networks``, layer 2) and their training and
evaluation (``model.training``, layer 4, on top of the inference runtime). The shipped
weights and model cards live in ``model/weights``."""
