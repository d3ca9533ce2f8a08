"""Pieces shared by the ``ropekit`` and ``ropekit-lab`` command lines.

Nothing here imports torch: the parsers are built from it before any argument is read,
and ``--help`` must stay fast.
"""

from __future__ import annotations

import importlib.util
import re

__all__ = ["MATPLOTLIB_HINT", "help_text", "matplotlib_missing", "require_matplotlib"]

#: The one install hint for every command that draws a figure.
MATPLOTLIB_HINT = "pip install matplotlib (or the extra: pip install 'ropekit[plot]')"

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def help_text(doc: str) -> str:
    """A module docstring as plain text for ``--help``: reST roles and double-backtick
    literals become their bare text (``:class:`~a.B``` -> ``B``), a trailing ``::`` a
    single colon."""

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        return target.rsplit(".", 1)[-1] if m.group(0).count("~") else target

    text = _ROLE.sub(role, doc)
    text = _LITERAL.sub(r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE).strip()


def matplotlib_missing(what: str) -> str | None:
    """Why ``what`` cannot draw its figure here (matplotlib not installed), or None.

    Only looks the package up (no import), so a command can check before it starts work.
    """
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return f"{what} needs matplotlib, which is not installed: {MATPLOTLIB_HINT}"


def require_matplotlib(what: str) -> None:
    """Raise :class:`ropekit.RopeValueError` with the install hint if matplotlib is missing."""
    why = matplotlib_missing(what)
    if why is not None:
        from ..errors import RopeValueError  # imports torch: only on the error path

        raise RopeValueError(why)
