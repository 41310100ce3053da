"""Safe on a LAN: security headers on every response, read-only methods, optional auth.

Authentication, when configured, is HTTP Basic: the password is checked
against ``web_password_hash`` (``pbkdf2_sha256$<iterations>$<salt>$<hash>``,
made by ``runtally web --hash-password``) or equals the token; a token also
works as ``Authorization: Bearer <token>``.  The user name is not checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["CSP", "Guard", "hash_password", "is_loopback", "verify_password"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Nothing inline, nothing from elsewhere: scripts, styles and fetches from this origin only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_ITERATIONS = 600_000
_READ_METHODS = {"GET", "HEAD"}


def hash_password(password: str, *, iterations: int = _ITERATIONS) -> str:
    """A ``web_password_hash`` value for ``password`` (PBKDF2-SHA256, random salt)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a ``hash_password`` value; False for a malformed one."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: headers on every response, 405 for writes, 401 without credentials."""

    def __init__(
        self, app: ASGIApp, *, token: str | None = None, password_hash: str | None = None
    ) -> None:
        self.app = app
        self.token = token
        self.password_hash = password_hash
        # PBKDF2 costs ~0.3 s: remember the passwords already accepted (by digest).
        self._accepted: set[bytes] = set()

    @property
    def required(self) -> bool:
        return bool(self.token or self.password_hash)

    def _authorized(self, header: bytes | None) -> bool:
        if not self.required:
            return True
        if header is None:
            return False
        scheme, _, value = header.decode("latin-1").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return bool(self.token) and hmac.compare_digest(value.strip(), self.token or "")
        if scheme != "basic":
            return False
        try:
            _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if self.token and hmac.compare_digest(password, self.token):
            return True
        if not self.password_hash:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        if digest in self._accepted:
            return True
        if verify_password(password, self.password_hash):
            self._accepted.add(digest)
            return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        if scope["method"] not in _READ_METHODS:
            await _plain(send_with_headers, 405, b"read-only dashboard", [(b"allow", b"GET, HEAD")])
            return
        headers = dict(scope.get("headers") or [])
        if not self._authorized(headers.get(b"authorization")):
            challenge = (b"www-authenticate", b'Basic realm="runtally", charset="UTF-8"')
            await _plain(send_with_headers, 401, b"authentication required", [challenge])
            return
        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
