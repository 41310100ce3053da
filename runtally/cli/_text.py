"""Stored text made safe for a terminal: control characters shown, never obeyed.

Pipeline names, error messages, stacks and stderr tails come from pipelines
and from the commands they wrap; ``\\x1b[2J`` in one of them must not clear
the operator's screen, nor colour codes be replayed.  ``visible`` escapes
every C0/C1 control character but newline and tab (``\\x1b``), DEL, and the
invisible or direction-changing format characters (``\\u202e``).  Rich markup
needs no escaping: every console is created with ``markup=False``
(``_render.console``), so ``[red]`` is printed as written.  ``--json`` output
does not go through here: it keeps the stored text exactly.
"""

from __future__ import annotations

__all__ = ["visible"]

_KEEP = {"\n", "\t"}
_FORMAT = [0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2028, 0x2029, 0x2060, 0xFEFF]
_FORMAT += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES: dict[int, str] = {
    c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in _KEEP
}
_ESCAPES.update({c: f"\\u{c:04x}" for c in _FORMAT})


def visible(text: str) -> str:
    """``text`` with control and invisible format characters written as escapes."""
    return text.translate(_ESCAPES)
