"""Layer 7 (the top): the Python API (``from riir import register``), the ``riir`` command
line and the process supervisor of ``riir serve``.

Imports whatever it runs, lazily, so ``import riir`` and ``riir --help`` are instant.
"""

from conventions.version import __version__
from riir.api import Result, register

__all__ = ["Result", "__version__", "register"]
