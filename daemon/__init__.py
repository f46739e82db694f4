"""Tandava: a long-running daemon that turns songs into AI music videos."""

__version__ = "0.1.0"
