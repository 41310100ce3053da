"""Secrets out of a command line before it leaves the process (``meta.argv``).

A pipeline's argv often carries credentials: ``--password=...``,
``--token abc``, ``DB_PASSWORD=...``, ``postgres://user:pass@host/db``,
``mysql -pSECRET``, ``curl -u user:pass -H "Authorization: Bearer x"``,
``https://h/x?token=...``.  The values of such arguments are replaced with
``REDACTED``; the names stay, so a run still shows how it was called.  When
in doubt a value is hidden: a redacted harmless value costs a little
clarity, a leaked one a credential.  Standard library only (the client's rule).
"""

from __future__ import annotations

import re  # loaded by msgspec already; compiling the patterns is what costs
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "redact_argv"]

REDACTED = "***"


class _Lazy:
    """A pattern compiled on first use: a cron process's argv needs few of them, if any
    (compiling all of them at import cost ~1 ms)."""

    __slots__ = ("_args", "_pattern")

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._pattern: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> Any:  # match, search, sub, split
        if self._pattern is None:
            self._pattern = re.compile(*self._args)
        return getattr(self._pattern, name)


#: A name (option, variable, header, query parameter) whose value is a secret ...
_SECRET_NAME = _Lazy(
    r"pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|credential|auth[-_]?key|session[-_]?key|cookie|signature",
    re.IGNORECASE,
)
#: ... or that has one of these words as a whole part (``--auth``, ``--ssh-key``,
#: ``LICENSE_KEY``, ``sig``), not merely inside a word (``--keyboard``, ``MONKEY``).
_SECRET_PARTS = frozenset({"auth", "authorization", "key", "sig", "apikey"})
_PARTS = _Lazy(r"[-_.\s]+")
#: ``--name=value``, ``-name=value`` or ``NAME=value``.
_ASSIGNMENT = _Lazy(r"^(-{0,2}[A-Za-z0-9_.-]+)=(.*)$", re.DOTALL)
#: The password of URL userinfo: ``scheme://user:PASSWORD@host``.
_URL_PASSWORD = _Lazy(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(@)")
#: A URL query parameter (``?token=x``, ``&X-Amz-Signature=x``): name, value.
_QUERY_PARAM = _Lazy(r"([?&;])([^=&#;\s]+)=([^&#;\s]*)")
#: An HTTP header (``Authorization: Bearer x``, ``-HCookie: a=b``): name, value.
_HEADER = _Lazy(r"^(-H)?([A-Za-z0-9-]+)(\s*:\s*)(\S.*)$", re.DOTALL)
#: Short password options of common tools: ``mysql -pSECRET``, ``sshpass -p X``,
#: ``-P X``; a number is a port (``ssh -p 22``, ``mysql -P 3306``) and stays.
_SHORT_PASSWORD = frozenset({"-p", "-P"})
#: ``user:password`` options: ``curl -u``/``--user``/``--proxy-user``, ``-U``.
_USER_PASSWORD = frozenset({"-u", "-U", "--user", "--proxy-user"})


def _secret_name(name: str) -> bool:
    name = name.lstrip("-")
    if _SECRET_NAME.search(name):
        return True
    return any(part.lower() in _SECRET_PARTS for part in _PARTS.split(name))


def _user_password(value: str) -> str:
    user, colon, _ = value.partition(":")
    return f"{user}:{REDACTED}" if colon else value


def _query(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if value and _secret_name(name):
        return f"{sep}{name}={REDACTED}"
    return match.group(0)


def _in_text(arg: str) -> str:
    """Secrets inside one argument: URL passwords and secret query parameters."""
    if "@" in arg:  # the pattern needs one: no compiling it for every argument
        arg = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", arg)
    return _QUERY_PARAM.sub(_query, arg) if "=" in arg else arg


def _one(arg: str, previous: str | None) -> tuple[str, bool]:
    """``arg`` redacted, given the option before it; and whether the next is a secret."""
    if previous is not None and not arg.startswith("-"):
        if previous in _USER_PASSWORD:
            return _user_password(arg), False
        if previous in _SHORT_PASSWORD:
            return (arg if arg.isdigit() else REDACTED), False
        return REDACTED, False
    header = _HEADER.match(arg) if ":" in arg else None  # (no ":", no header: not compiled)
    if header is not None and _secret_name(header.group(2)):
        return f"{header.group(1) or ''}{header.group(2)}{header.group(3)}{REDACTED}", False
    if arg[:2] in _SHORT_PASSWORD and len(arg) > 2 and not arg.startswith("--"):
        return (arg if arg[2:].isdigit() else arg[:2] + REDACTED), False
    if arg[:2] in ("-u", "-U") and len(arg) > 2 and not arg.startswith("--"):
        return arg[:2] + _user_password(arg[2:]), False
    assignment = _ASSIGNMENT.match(arg) if "=" in arg else None
    if assignment is not None:
        name, value = assignment.groups()
        if _secret_name(name):
            return f"{name}={REDACTED}", False
        if name in _USER_PASSWORD:
            return f"{name}={_user_password(value)}", False
        return _in_text(arg), False
    if arg in _SHORT_PASSWORD or arg in _USER_PASSWORD:
        return arg, True
    return _in_text(arg), arg.startswith("-") and _secret_name(arg)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` with secret values replaced by ``REDACTED``; never raises for strings.

    ``--password=x`` -> ``--password=***``; ``--token x`` -> ``--token ***``
    (an option whose name looks secret takes the next argument as its value
    unless that starts with ``-``); ``API_KEY=x`` -> ``API_KEY=***``;
    ``-pX``/``-p X`` -> ``-p***``/``-p ***`` (a number stays: a port);
    ``-u user:x`` -> ``-u user:***``; ``Authorization: x`` ->
    ``Authorization: ***``; ``https://u:p@h/?token=t`` ->
    ``https://u:***@h/?token=***`` anywhere in an argument.
    """
    out: list[str] = []
    previous: str | None = None
    args = list(argv)
    # runtally's own command line, up to "--": its -p is --pipeline, not a
    # password (found by a new user: `runtally exec -p nightly` was recorded
    # as `-p ***`).  What follows "--" is another program's: the usual rules.
    own = bool(args) and _runtally_cli(args[0])
    for arg in args:
        if own and (arg == "--" or arg[:2] in _SHORT_PASSWORD):
            own = arg != "--"
            out.append(arg)
            previous = None
            continue
        redacted, takes_next = _one(arg, previous)
        out.append(redacted)
        previous = arg if takes_next else None
    return out


def _runtally_cli(program: str) -> bool:
    """Whether ``program`` (an ``argv[0]``) is runtally's own command line."""
    name = program.replace("\\", "/").rsplit("/", 1)[-1]
    return name in ("runtally", "runtallyd") or program.endswith("runtally/cli/__main__.py")
