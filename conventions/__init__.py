"""Layer 1 (the bottom): the torch-free conventions every other package shares.

Image I/O and header checks, DICOM series in (``dicom``, pydicom only: the gateway's check)
and DICOM objects out (``dicom_export``), grids and physical space, intensity normalisation,
the artifact contract, the model catalogue, the options a registration request may set, and
the domain errors. Imports nothing of this project; the gateway uses it, so it never imports
torch.
"""
