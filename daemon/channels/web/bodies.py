"""Request bodies read with a cap: a client never makes the daemon hold more than it allows.

How this works: ``declared_length`` refuses a body whose ``Content-Length``
already says it is too large, before a byte of it is read; ``read_capped``
then reads the stream chunk by chunk and stops at the cap, for bodies sent
chunked (no length) or with a length that lies. Both raise ``TooLarge``; the
panel and the API each turn it into their own 413.
"""

from __future__ import annotations

from starlette.requests import Request


class TooLarge(Exception):
    """A request body over its cap; ``limit`` is the cap in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is over {limit} bytes")


class BadLength(Exception):
    """A ``Content-Length`` header that is not a number."""


def declared_length(request: Request, limit: int) -> int | None:
    """The body's declared length (None when it is sent chunked); TooLarge past ``limit``."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        length = int(raw)
    except ValueError:
        raise BadLength(raw) from None
    if length < 0:
        raise BadLength(raw)
    if length > limit:
        raise TooLarge(limit)
    return length


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes of it held at any time (TooLarge past that)."""
    declared_length(request, limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)
