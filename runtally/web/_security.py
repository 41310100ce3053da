"""Safe on a LAN: Host checked, security headers everywhere, read-only methods, optional auth.

Authentication, when configured, is HTTP Basic: the password is checked
against ``web_password_hash`` (``pbkdf2_sha256$<iterations>$<salt>$<hash>``,
made by ``runtally web --hash-password``) or equals the token; a token also
works as ``Authorization: Bearer <token>``, as the cookie ``runtally_token``
(HttpOnly, SameSite=Strict), and once as ``?token=`` on any page, which sets
that cookie and redirects to the same URL without it (the Jupyter way: the
URL printed at start-up opens a browser session).  The user name is not checked.

The ``Host`` header must name one of ``allowed_hosts`` (400 otherwise): a
hostile site that re-points its own name at 127.0.0.1 (DNS rebinding) makes
the browser send *its* name, so it cannot read the dashboard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from starlette.requests import cookie_parser

__all__ = [
    "CSP",
    "TOKEN_COOKIE",
    "Guard",
    "allowed_hosts",
    "hash_password",
    "host_name",
    "is_loopback",
    "verify_password",
]

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
TOKEN_COOKIE = "runtally_token"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
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


def host_name(value: str) -> str:
    """The host of a ``Host`` header or bind address, lower case, without port.

    ``Example.org:8390`` -> ``example.org``; ``[::1]:8390`` and ``::1`` -> ``[::1]``.
    """
    value = value.strip().lower()
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    if value.count(":") > 1:  # a bare IPv6 address (a bind address, never a Host header)
        return f"[{value}]"
    return value.partition(":")[0]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def allowed_hosts(
    bind: str, *, web_url: str | None = None, extra: Iterable[str] = ()
) -> frozenset[str]:
    """The Host names ``Guard`` accepts for a dashboard bound to ``bind``.

    The bind address; the loopback names when it is loopback; the host of
    ``web_url`` (the public URL, e.g. behind a proxy); ``extra`` (the
    ``web_allowed_hosts`` setting: names, ``*`` for any).  A wildcard bind
    (``0.0.0.0``, ``::``) adds ``*ip`` (any IP-literal Host: DNS rebinding
    needs a name) and this machine's host name.
    """
    hosts = {host_name(bind)}
    if is_loopback(bind):
        hosts.update(_LOOPBACK_NAMES)
    if _is_ip(bind) and ipaddress.ip_address(bind.strip("[]")).is_unspecified:
        import socket

        hosts.update(("*ip", *_LOOPBACK_NAMES, socket.gethostname().lower()))
    if web_url:
        name = urlsplit(web_url).hostname
        if name:
            hosts.add(host_name(f"[{name}]" if ":" in name else name))
    hosts.update(h if h == "*" else host_name(h) for h in extra)
    return frozenset(hosts)


class Guard:
    """ASGI middleware: Host check (400), headers, 405 for writes, 401 without credentials.

    ``allowed_hosts`` None accepts any Host (for embedding; ``runtally web``
    always passes ``allowed_hosts(...)``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None = None,
        password_hash: str | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.password_hash = password_hash
        self.allowed_hosts = allowed_hosts
        # PBKDF2 costs ~0.3 s: remember the passwords already accepted (by digest).
        self._accepted: set[bytes] = set()

    @property
    def required(self) -> bool:
        return bool(self.token or self.password_hash)

    def _authorized(self, header: bytes | None) -> bool:
        """Whether an ``Authorization`` header carries the token (Bearer, or Basic's
        password) or the password.  Compared as bytes: a header may hold any byte,
        and ``compare_digest`` refuses non-ASCII str (a 500 for anyone, before)."""
        if not self.required:
            return True
        if header is None:
            return False
        scheme, _, value = header.partition(b" ")
        scheme, value = scheme.lower(), value.strip()
        token = (self.token or "").encode()
        if scheme == b"bearer":
            return bool(token) and hmac.compare_digest(value, token)
        if scheme != b"basic":
            return False
        try:
            _user, _, password = base64.b64decode(value, validate=True).partition(b":")
        except ValueError:  # (binascii.Error is one)
            return False
        if token and hmac.compare_digest(password, token):
            return True
        if not self.password_hash:
            return False
        digest = hashlib.sha256(password).digest()
        if digest in self._accepted:
            return True
        try:
            text = password.decode()
        except UnicodeDecodeError:
            return False  # set-password takes text: no such password was set
        if verify_password(text, self.password_hash):
            self._accepted.add(digest)
            return True
        return False

    def _host_allowed(self, header: bytes | None) -> bool:
        if self.allowed_hosts is None or "*" in self.allowed_hosts:
            return True
        if header is None:
            return False
        name = host_name(header.decode("latin-1"))
        return name in self.allowed_hosts or ("*ip" in self.allowed_hosts and _is_ip(name))

    def _cookie_ok(self, header: bytes | None) -> bool:
        if not self.token or header is None:
            return False
        value = cookie_parser(header.decode("latin-1")).get(TOKEN_COOKIE, "")
        return hmac.compare_digest(value.encode(), _cookie_value(self.token).encode())

    def _token_landing(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """For ``?token=<the token>``: headers of a redirect that sets the cookie; else None."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if not given or not hmac.compare_digest(given[-1].encode(), (self.token or "").encode()):
            return None
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        location = "/" + path.lstrip("/")  # never "//host": an off-site redirect
        value = _cookie_value(self.token or "")
        cookie = f"{TOKEN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict"
        return [
            (b"location", (location + ("?" + rest if rest else "")).encode("latin-1")),
            (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        headers = dict(scope.get("headers") or [])
        if not self._host_allowed(headers.get(b"host")):
            await _plain(send_with_headers, 400, b"unknown Host (see web_allowed_hosts)", [])
            return
        if scope["method"] not in _READ_METHODS:
            await _plain(send_with_headers, 405, b"read-only dashboard", [(b"allow", b"GET, HEAD")])
            return
        if self.token and (landing := self._token_landing(scope)) is not None:
            await _plain(send_with_headers, 303, b"", landing)
            return
        if not (
            self._authorized(headers.get(b"authorization"))
            or self._cookie_ok(headers.get(b"cookie"))
        ):
            challenge = (b"www-authenticate", b'Basic realm="runtally", charset="UTF-8"')
            await _plain(send_with_headers, 401, b"authentication required", [challenge])
            return
        await self.app(scope, receive, send_with_headers)


def _cookie_value(token: str) -> str:
    """The token as a cookie value: percent-encoded, so any token fits the cookie syntax."""
    return quote(token, safe="")


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
