"""The worker: Celery tasks and the inference runtime. The only place that touches CUDA."""
