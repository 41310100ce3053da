"""The one place the version lives (pyproject.toml mirrors it)."""

__version__ = "0.2.0"
