"""A fake Google (Gemini API and Vertex AI) for the gemini and veo backends (see server.py)."""

from .server import API_KEY, IMAGE_MODEL, RAI_REASON, TOKEN, VEO_MODEL, FakeGoogle

__all__ = ["API_KEY", "IMAGE_MODEL", "RAI_REASON", "TOKEN", "VEO_MODEL", "FakeGoogle"]
