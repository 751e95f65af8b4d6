"""The version of bcos-zoo (one place; written into every file bcos-zoo saves)."""

__version__ = "0.1.0"
