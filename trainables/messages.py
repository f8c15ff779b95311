"""One-line user messages: how a value the user typed is echoed back, what pydantic found, why a
run diverged."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

MAX_SHOWN = 60  # characters of a bad value echoed back in a message
# ``scheme://user:secret@host``: everything up to the last '@' of the token is user info (a
# secret may hold '/', AWS keys do); ``sqlite:////abs`` has no authority, so it has none.
_USER_INFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(?!/)[^\s'\"?#]*@")
# A query parameter that carries a secret (``?token=``, ``&X-Amz-Signature=``, ``?sig=``).
SECRET_QUERY_PARAM = re.compile(
    r"([?&;](?:[A-Za-z0-9_.\-]*(?:token|secret|passw(?:or)?d|pwd|key|sig|signature|auth|"
    r"credential|session)[A-Za-z0-9_.\-]*)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    """``text`` with the user info of every URI in it, and the value of every query parameter
    that names a secret (``token``, ``key``, ``signature``, ...), replaced by ``***``."""
    return SECRET_QUERY_PARAM.sub(r"\1***", _USER_INFO.sub(r"\1***@", text))


def uri_credentials(uri: str) -> str | None:
    """The redacted form of ``uri`` (``scheme://***@host/...``) when it holds user info
    (credentials), else None."""
    redacted = redact_credentials(uri)
    return None if redacted == uri else redacted


def shown(value: object) -> str:
    """``repr(value)`` cut to a readable length, for messages that echo user input; the user
    info of a URI in it (``scheme://user:password@``) is never shown."""
    text = redact_credentials(repr(value))
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 3]}... ({len(text)} chars)"


@dataclass(frozen=True)
class Problem:
    """The first error of a pydantic validation: where (the key path), why (one line), the
    value given, and whether the key is unknown."""

    loc: tuple[str | int, ...]
    reason: str
    value: Any
    unknown_key: bool

    def key(self, empty: str) -> str:
        """The dotted key path, or ``empty`` for the whole document; a key holding a control or
        line-break character shows it escaped, so the message stays one line."""
        parts = (str(part) for part in self.loc)
        return (
            ".".join(p if p.isprintable() else p.encode("unicode_escape").decode() for p in parts)
            or empty
        )


def first_problem(err: ValidationError) -> Problem:
    """The one problem a message about ``err`` names: its first error."""
    first = err.errors()[0]
    unknown = first["type"] == "extra_forbidden"
    reason = "unknown key" if unknown else first["msg"].removeprefix("Value error, ")
    loc = tuple(part for part in first["loc"] if part != "__root__")
    return Problem(loc, reason, first.get("input"), unknown)


def diverged_reason(at_chance: bool, epoch: int) -> str:
    """Why a run ended as diverged: its loss, or the chance guard (``chance_epoch``)."""
    if at_chance:
        return f"val accuracy at chance after epoch {epoch}: stopped by the chance guard"
    return f"loss not finite at epoch {epoch}"
