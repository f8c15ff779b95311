"""One-line user messages: how a value the user typed is echoed back."""

from __future__ import annotations

MAX_SHOWN = 60  # characters of a bad value echoed back in a message


def shown(value: object) -> str:
    """``repr(value)`` cut to a readable length, for messages that echo user input."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 3]}... ({len(text)} chars)"
