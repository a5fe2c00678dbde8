"""Layer 2: the networks and what they are made of.

RIIR and the baselines (VoxelMorph, GraDIRN, classical descent), warping (the owner of
``grid_sample``'s conventions and of field resampling between grids), the similarity and
regularisation losses, the evaluation metrics and the checkpoint format. Imports only
``conventions``; knows nothing of files, HTTP or Celery.
"""
