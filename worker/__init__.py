"""The worker: the inference runtime (``worker.inference``, layer 3) and, on top of the job
plane, the Celery app and tasks (``worker.celery_app``, ``worker.tasks``, layer 6). The
only place that touches CUDA at run time."""
