"""The panel's gate: every request passes ``Guard`` before any route runs.

How this works: ``Guard`` is plain ASGI middleware (so video streaming is
untouched); before any route runs it enforces:
- on a loopback bind, the ``Host`` header must name this machine (a web page
  on another site cannot reach the panel through DNS rebinding);
- with a token configured (always, when bound beyond loopback), every request
  carries it: ``Authorization: Bearer``, or the HttpOnly SameSite=Strict
  cookie that ``?token=`` sets once (then redirects the token out of the URL);
- a POST whose ``Origin`` (or ``Sec-Fetch-Site``) says it came from another
  site is refused; and every browser POST must carry the per-process CSRF
  value embedded in the page's forms (a Bearer request from a script is not
  a browser's ambient credential, so it needs none).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.channels.web import pages as web_pages

COOKIE = "tandava_token"
# A phone stays signed in this long; changing web.token signs every browser out at once.
COOKIE_DAYS = 30
FETCH_HEADER = "x-tandava-fetch"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self'; media-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def cookie_value(token: str) -> str:
    """What the auth cookie holds: derived from the token, so the cookie never shows it."""
    return hmac.new(token.encode("utf-8"), b"tandava-web-cookie", hashlib.sha256).hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def refusal(status: int, title: str, text: str, scope: Scope) -> Response:
    """A refusal in the shape the asker reads: the API's JSON, the script's JSON, or a page."""
    if str(scope.get("path", "")).startswith("/api/"):  # the API's one error shape
        code = {401: "token_needed", 403: "forbidden", 404: "not_found"}.get(status, "refused")
        return JSONResponse({"error": {"code": code, "message": text, "hint": ""}}, status_code=status)
    if FETCH_HEADER.encode("latin-1") in dict(scope.get("headers", [])):
        return JSONResponse({"error": text}, status_code=status)
    page = web_pages.document(title, web_pages.message_main(title, text))
    return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})


class Guard:
    """Host check, token, and cross-site POST refusal, before any route (see the module doc)."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = token
        # Host names a request may use (None: any; a wildcard bind is reached by many names).
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        refusal = self.check(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def check(self, request: Request) -> Response | None:
        """The response refusing ``request``, or None to let it through."""
        scope = request.scope
        host = (request.url.hostname or "").strip("[]").lower()
        if self.hosts is not None and host not in self.hosts:
            return refusal(403, "Wrong address", "This panel answers only at 127.0.0.1 or "
                            "localhost (it listens on this machine only).", scope)
        scope.setdefault("state", {})["bearer"] = False
        if self.token:
            given = request.query_params.get("token")
            bearer = request.headers.get("authorization", "")
            if bearer.lower().startswith("bearer ") and same_secret(bearer[7:].strip(), self.token):
                scope["state"]["bearer"] = True
            elif given is not None and same_secret(given, self.token) and request.method in ("GET", "HEAD"):
                return self._accept_token(request)
            elif not same_secret(request.cookies.get(COOKIE, ""), cookie_value(self.token)):
                response = refusal(401, "Token needed", "This panel needs its token: open it once "
                                    "as …/?token=<web.token> (the value in your configuration or "
                                    "TANDAVA_WEB__TOKEN), or send Authorization: Bearer.", scope)
                response.headers["www-authenticate"] = 'Bearer realm="tandava"'
                return response
        if request.method == "POST" and not scope["state"]["bearer"]:
            origin = request.headers.get("origin")
            site = request.headers.get("sec-fetch-site", "same-origin")
            foreign = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
            if foreign or site not in ("same-origin", "none"):
                return refusal(403, "Refused", "A page from another site tried to act on "
                                "this panel; it was refused.", scope)
        return None

    def _accept_token(self, request: Request) -> Response:
        """Trade ``?token=`` for a cookie and take the token out of the address bar."""
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie_value(self.token), max_age=COOKIE_DAYS * 86400,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response
