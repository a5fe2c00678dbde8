"""Layer 6: the FastAPI gateway of the registration service: routes, schemas, uploads, auth,
HTTP errors. Imports ``jobs`` and ``conventions`` only: never torch, SimpleITK, ``model`` or
``worker`` (it dispatches Celery tasks by name), so it starts in a second."""
