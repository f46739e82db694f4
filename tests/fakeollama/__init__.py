"""A fake Ollama server that speaks the real REST wire format (see server.py)."""

from .server import GB, MODEL, FakeOllama

__all__ = ["GB", "MODEL", "FakeOllama"]
