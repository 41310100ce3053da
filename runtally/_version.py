"""The one place the version lives (pyproject.toml mirrors it)."""

__version__ = "0.1.0"
