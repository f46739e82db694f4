"""A fake Telegram Bot API server that speaks the real wire format (see server.py)."""

from .server import CHAT_ID, TOKEN, Answer, Edit, FakeTelegram, Sent

__all__ = ["CHAT_ID", "TOKEN", "Answer", "Edit", "FakeTelegram", "Sent"]
