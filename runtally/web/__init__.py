"""``runtally web``: a read-only dashboard over dashboard.sqlite (Starlette on Hypercorn/trio).

A separate process from the daemon: it opens the database ``mode=ro`` +
``query_only`` per request, so it works whether the daemon runs or not and
never writes.  Pages: overview, runs, run, errors, pipeline; each also as
JSON under ``/api``.
"""

from ._app import WebConfig, create_app
from ._security import allowed_hosts, hash_password, is_loopback, verify_password
from ._serve import serve

__all__ = [
    "WebConfig",
    "allowed_hosts",
    "create_app",
    "hash_password",
    "is_loopback",
    "serve",
    "verify_password",
]
