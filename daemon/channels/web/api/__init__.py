"""The HTTP API under ``/api/v1``: another way in (songs) and out (runs, files, events) for programs.

How this works: the panel's Starlette app mounts ``routes.Api.app`` at
``/api/v1``, behind the panel's ``Guard`` (loopback needs no token; beyond it,
``Authorization: Bearer <web.token>``). Modules:

- ``uploads``: multipart streamed to disk, sniffed, sanitised, then ``Intake.accept``.
- ``runs``: what a client reads (lists with a summary cache, one run in full, files).
- ``events``: store changes turned into numbered, persisted events (SSE reads them).
- ``webhooks``: those events POSTed, signed, at least once, from a persistent outbox.
- ``models`` and ``openapi``: the shapes, and the spec written from them.
"""
