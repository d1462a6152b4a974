"""fraud-monitor: command line, configuration and the local stack."""

__version__ = "0.1.0"
