"""Text bound for a job store or a log line: storable, bounded, and free of secrets."""

from __future__ import annotations

import re

MAX_TEXT_LENGTH = 4000
"""The most characters a text column (status message, job name, instance id) keeps."""

TRUNCATION_MARK = " …[truncated]"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^@/\s]*@")
_SECRET_SETTING = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|sharedaccesskey|accountkey|sig)\s*=\s*"
    r"('[^']*'|\"[^\"]*\"|[^\s;&]+)"
)


def storable_text(value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """`value` as both stores accept it: NUL removed, lone surrogates replaced, at most `limit` chars.

    PostgreSQL refuses NUL in text and neither driver can encode a lone surrogate; an unbounded
    status message would bloat the history table. Longer text keeps its start and ends with
    `TRUNCATION_MARK`. Idempotent.
    """
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if len(value) > limit:
        value = value[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return value


def redact(text: str) -> str:
    """`text` with URL passwords and ``password=...``-style settings replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    return _SECRET_SETTING.sub(lambda m: f"{m.group(1)}=***", text)


def message_of(exc: BaseException) -> str:
    """An exception's message without secrets, even if its `__str__` fails."""
    try:
        return redact(str(exc))
    except Exception:
        return "(the exception's message could not be read)"


def describe(exc: BaseException) -> str:
    """``TypeName: message`` for an exception, without secrets, even if its `__str__` fails."""
    text = message_of(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
