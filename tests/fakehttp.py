"""The harness every fake HTTP service in the tests shares: aiohttp on a real socket, in its own thread.

A fake (Telegram, Gemini, Ollama) subclasses ``ThreadedServer`` and builds
its ``web.Application`` in ``make_app``; this class runs it on 127.0.0.1 on
its own event loop, stops it cleanly, and can take it off the network and
back (``go_down``/``come_back``: clients see "connection refused", then the
same port answers again with the fake's memory kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Any, Self

from aiohttp import web


class ThreadedServer:
    """An aiohttp app on a real socket, served from a background thread."""

    name = "fake"

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._stopping: asyncio.Event | None = None

    def make_app(self) -> web.Application:
        """The fake's routes; called on its own loop."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(ready)), name=self.name,
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._site is None:
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and end the loop; returns once all of it is done."""
        thread = self._thread
        if self._loop is not None and self._stopping is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                self._loop.call_soon_threadsafe(self._stopping.set)
            # A busy machine can take seconds; a thread left running would close its sockets
            # during some later test, or leave them to the garbage collector.
            thread.join(60)
            if thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not stop within 60 s")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop listening and cut every connection: clients see "connection refused"."""
        self._on_loop(self._go_down())

    def come_back(self) -> None:
        """Listen again on the same port, with everything the fake holds kept."""
        self._on_loop(self._listen())

    def _on_loop(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5,
                                     handler_cancellation=True)
        await self._runner.setup()
        await self._listen()
        ready.set()
        await self._stopping.wait()
        await close_runner(self._runner)

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _go_down(self) -> None:
        assert self._runner is not None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        for _ in range(5):  # connections accepted just before reach the server (see close_runner)
            await asyncio.sleep(0)
        server = self._runner.server
        for handler in list(server.connections) if server is not None else []:
            if handler.transport is not None:
                handler.transport.abort()


async def close_runner(runner: web.AppRunner) -> None:
    """Stop listening, let connections already accepted reach the server, then close them all.

    A connection the kernel accepted just before the listener closed is handed to
    the server a loop turn later; cleaning up before that turn left its socket
    unowned, and the garbage collector reported it ("unclosed <socket …>") in
    whatever test ran next, mostly on a busy machine.
    """
    for site in list(runner.sites):
        await site.stop()
    for _ in range(5):
        await asyncio.sleep(0)
    await runner.cleanup()
