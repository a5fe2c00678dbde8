"""RIIR: recurrent inference image registration — shared conventions and the command line.

This package is torch-free on purpose: the gateway imports its image I/O and validation.
"""

__version__ = "0.1.0"
