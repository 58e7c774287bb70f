"""Who may ask ``ddim serve``, and what every answer carries: an ASGI wrapper of the app.

A local server is reachable from any page the user visits (a cross-site POST) and, through
DNS rebinding, readable by one. So, as Jupyter does:

- the ``Host`` of every request must name this server: a loopback name, the address it is
  bound to, or a name given with ``--allow-host`` (any port); else 403;
- a POST that carries an ``Origin`` must come from this server's own page (the origin
  ``http://<Host>``: another port of the same machine is another site); else 403;
- a POST must say ``Content-Type: application/json`` (a form or ``text/plain`` POST, which
  a foreign page may send without asking first, is refused with 415);
- every answer carries ``nosniff``, a ``Referrer-Policy`` and a CSP that forbids framing
  (the page's own CSP adds what it loads).

Refusals are JSON ``{"error": ...}`` like every other error of the API.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The names of this machine that no other site can claim.
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: Headers every answer gets (a page answer keeps the CSP it set itself).
HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
}
API_CSP = b"default-src 'none'; frame-ancestors 'none'"


def host_name(value: str) -> str:
    """The host of a ``Host`` header or URL authority, without its port, lower case
    (``[::1]:8000`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """``app`` answering only requests from the hosts ``allowed`` (names or addresses, with
    :data:`LOOPBACK` always), with the security headers on every answer."""

    def __init__(self, app: App, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in (*LOOPBACK, *allowed)}

    def __getattr__(self, name: str) -> Any:
        """The wrapped application's attributes (its ``state``, for one)."""
        return getattr(self.__dict__["app"], name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.refusal(scope)
        if problem is not None:
            await respond(send, *problem)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in HEADERS.items() if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", API_CSP))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` when the request is refused, else ``None``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if host not in self.allowed:
            return 403, (
                f"this server answers requests for {', '.join(sorted(self.allowed))} only, "
                f"not {host or 'no host'!r} (ddim serve --allow-host NAME adds one)"
            )
        if scope["method"] != "POST":
            return None
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{headers.get('host', '').lower()}":
            return 403, f"requests from {origin} are refused: only this server's own page may ask"
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return 415, f"send the request as application/json, not {media or 'no type'}"
        return None


async def respond(send: Send, status: int, message: str) -> None:
    """A JSON error answer with the security headers."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", API_CSP),
        *HEADERS.items(),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
