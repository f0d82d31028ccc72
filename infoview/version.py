"""infoview's version, in a module of its own: the base layer reads it without importing the front door."""

__version__ = "0.1.0"
