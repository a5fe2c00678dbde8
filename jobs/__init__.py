"""Layer 5: the job plane that the gateway and the worker share.

The job records in Redis (``store``), the running job's lease and recovery (``lease``), the
job folders on the storage volume (``storage``), dispatch and queue inspection (``broker``),
the PACS over DICOMweb (``pacs``) and the service's runtime settings (``settings``).
Torch-free; imports only ``conventions``.
"""
