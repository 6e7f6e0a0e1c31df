"""Small wording helpers for one-line user messages (no torch)."""

from __future__ import annotations

MAX_MESSAGE = 300


def with_article(name: str) -> str:
    """'a list', 'an int': a type name with its article."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def exception_text(exc: BaseException) -> str:
    """'ValueError: message' on one line, cut at MAX_MESSAGE characters."""
    message = exc.msg or "" if isinstance(exc, SyntaxError) else str(exc)
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
