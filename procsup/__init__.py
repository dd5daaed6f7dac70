"""procsup: a declarative, config-driven process supervisor."""

__version__ = "0.1.0"
