"""The version of cmrsdk: the one place it is written (pyproject.toml reads it, CHANGELOG.md names it)."""

__version__ = "0.14.12"
