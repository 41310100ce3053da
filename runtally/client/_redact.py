"""Secrets out of a command line before it leaves the process (``meta.argv``).

A pipeline's argv often carries credentials: ``--password=...``,
``--token abc``, ``DB_PASSWORD=...``, ``postgres://user:pass@host/db``.  The
values of such arguments are replaced with ``REDACTED``; the names stay, so a
run still shows how it was called.  Standard library only (the client's rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "redact_argv"]

REDACTED = "***"

#: A name (option or variable) whose value is a secret.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|credential|auth[-_]?key|session[-_]?key|cookie",
    re.IGNORECASE,
)
#: ``--name=value``, ``-name=value`` or ``NAME=value``.
_ASSIGNMENT = re.compile(r"^(-{0,2}[A-Za-z0-9_.-]+)=(.*)$", re.DOTALL)
#: The password of URL userinfo: ``scheme://user:PASSWORD@host``.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(@)")


def _secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def redact_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` with secret values replaced by ``REDACTED``; never raises for strings.

    ``--password=x`` -> ``--password=***``; ``--token x`` -> ``--token ***``
    (an option whose name looks secret takes the next argument as its value
    unless that starts with ``-``); ``API_KEY=x`` -> ``API_KEY=***``;
    ``https://u:p@h`` -> ``https://u:***@h`` anywhere in an argument.
    """
    out: list[str] = []
    take_next = False
    for arg in argv:
        if take_next and not arg.startswith("-"):
            out.append(REDACTED)
            take_next = False
            continue
        take_next = False
        assignment = _ASSIGNMENT.match(arg)
        if assignment is not None and _secret_name(assignment.group(1)):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        if arg.startswith("-") and assignment is None and _secret_name(arg):
            take_next = True
        out.append(_URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", arg))
    return out
