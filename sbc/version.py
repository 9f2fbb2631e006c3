"""The sbc version, in a module of its own: every floor (the artifact format included) reads
it without importing the API that `sbc/__init__.py` loads."""

__version__ = "0.1.0"
