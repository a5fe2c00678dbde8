"""Layer 7 (the top): the ``riir`` command line and the process supervisor of ``riir serve``.

Imports whatever it runs, lazily, so ``riir --help`` is instant.
"""

from conventions.version import __version__

__all__ = ["__version__"]
