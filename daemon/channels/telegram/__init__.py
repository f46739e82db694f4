"""The Telegram approval bot: ``bot`` (long polling, handlers), ``sync`` (what is
sent per chat), ``views`` (messages and buttons), ``state`` (telegram.json), ``media``."""
