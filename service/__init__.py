"""The FastAPI gateway of the registration service. Torch-free: it never imports ``model``."""
