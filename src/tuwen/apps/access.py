"""Who may call ``tuwen serve``: an API key, CORS origins and the address it binds.

With a key, every request except the page and the API description (``PUBLIC``) needs
``Authorization: Bearer KEY``; anything else is a 401 with a JSON reason. The check is
deny-by-default (a path not listed as public needs the key, whatever it routes to), and the
key is compared in constant time: both sides are hashed first, so not even the key's length
shows in the time an answer takes. Cross-origin calls from browsers are refused (no CORS
headers) unless origins are listed. Binding to an address other than loopback needs a key,
or ``--insecure`` to say that the open server is meant.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass

from tuwen.errors import TuwenError

API_KEY_ENV = "TUWEN_API_KEY"
MIN_KEY_CHARS = 16
PUBLIC = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")   # scheme://host[:port], no path


@dataclass(frozen=True)
class Access:
    """The server's key (None: open) and the origins allowed to call it from a browser."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        key = self.api_key
        if key is not None and (len(key) < MIN_KEY_CHARS or not key.isprintable()
                                or any(c.isspace() for c in key)):
            raise TuwenError(f"the API key must be at least {MIN_KEY_CHARS} printable "
                             "characters without spaces (make one with: python -c \"import "
                             "secrets; print(secrets.token_urlsafe(32))\")")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise TuwenError(f"--cors-origin {origin!r}: expected scheme://host[:port] "
                                 "such as https://example.org (no path), or *")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class RequireKey:
    """ASGI middleware: a request outside ``PUBLIC`` without the right bearer key is a 401."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.want = app, _digest(api_key.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            return await self.app(scope, receive, send)
        problem = self.problem(dict(scope["headers"]).get(b"authorization"))
        if problem is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": problem}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="tuwen"')]})
        await send({"type": "http.response.body", "body": body})

    def problem(self, header: bytes | None) -> str | None:
        """Why ``header`` (the Authorization value) is refused; None if it holds the key."""
        if not header:
            return "this server needs an API key: send the header 'Authorization: Bearer KEY'"
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "expected the header 'Authorization: Bearer KEY'"
        if not hmac.compare_digest(_digest(given.strip()), self.want):
            return "the API key is wrong"
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:   # a host name: it may resolve to anything
        return False


def check_binding(host: str, access: Access, insecure: bool) -> None:
    """Refuse to serve beyond this machine without a key, unless ``insecure``."""
    if access.api_key is None and not insecure and not is_loopback(host):
        raise TuwenError(f"--host {host} serves beyond this machine without an API key: give "
                         f"--api-key KEY (or set {API_KEY_ENV}), or --insecure to serve it "
                         "open to anyone who can reach it")
