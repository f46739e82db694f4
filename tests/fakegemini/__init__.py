"""A fake Gemini API server that speaks the wire format google-genai uses (see server.py)."""

from .server import (
    API_KEY,
    API_VERSION,
    MODEL,
    Call,
    FakeGemini,
    Reply,
    error,
    good_plan,
    slow,
    text,
    wild_plan,
)

__all__ = ["API_KEY", "API_VERSION", "MODEL", "Call", "FakeGemini", "Reply", "error", "good_plan", "slow",
           "text", "wild_plan"]
