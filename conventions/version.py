"""The release of this code: its one owner (``pyproject.toml`` reads it from here), so the
gateway image, which runs from source without installing the package, reports it too."""

__version__ = "0.1.0"
