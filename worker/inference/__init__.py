"""Layer 3: the inference runtime, the single code path of ``riir register``, of the Celery
tasks and of ``riir evaluate``.

Device choice, the model cache and running a model in physical space (``engine``), reading
inputs, measuring and writing the artifacts (``pipeline``), the preview figure. Imports
``model.networks`` and ``conventions``; nothing of Celery or HTTP.
"""
