"""Credentials out of anything shown: URLs in errors, reprs, log lines and health reasons.

`redact_url` keeps what helps a person (scheme, user name, host, port, database, the options it
knows) and replaces the rest of the credentials with ``***``. It works on the raw text, so a URL
that no parser understands (a password with an unencoded ``/`` or ``#``) is redacted too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_SAFE_USER = re.compile(r"[A-Za-z0-9._~+-]*")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._~/+-]*")
_DELIMITERS = re.compile(r"[/?#@:&=]")
_AMBIGUOUS = re.compile(r"[/?#]")

_SECRET_PARAMS = frozenset({"password", "ssl_password"})
"""Query parameters shown as ``name=***``."""
_SHOWN_PARAMS = frozenset(
    {
        "db",
        "username",
        "client_name",
        "protocol",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_read_size",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
    }
)
"""Query parameters shown with their value (when it is plain); any other item is ``***``: a
password with an unencoded ``&`` must not show up as a parameter name."""


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, the rest)``; the userinfo ends at the *last* ``@``, as
    URL parsers read it, so an unencoded ``@`` in a password stays inside it."""
    match = _SCHEME.match(url)
    scheme = match.group(0) if match else ""
    rest = url[len(scheme) :]
    userinfo, at, after = rest.rpartition("@")
    return (scheme, userinfo, after) if at else (scheme, None, rest)


def redact_url(url: str) -> str:
    """`url` with the password (or a lone user-info part, which may be one) and secret query
    values replaced by ``***``: ``redis://app:***@host:6379/0``."""
    scheme, userinfo, rest = split_credentials(url)
    if userinfo is not None and _AMBIGUOUS.search(userinfo):
        return scheme + MASK  # the last "@" may be in the path or query: show nothing
    shown = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:{MASK}@" if colon and _SAFE_USER.fullmatch(user) else f"{MASK}@"
    base, question, query = rest.partition("?")
    if question:
        base += "?" + "&".join(_redact_item(item) for item in query.split("&"))
    return scheme + shown + base


def _redact_item(item: str) -> str:
    name, equals, value = item.partition("=")
    if name in _SECRET_PARAMS:
        return f"{name}={MASK}"
    if name in _SHOWN_PARAMS:
        return item if equals and _SAFE_VALUE.fullmatch(value) else f"{name}={MASK}"
    return MASK


def url_secrets(url: str) -> tuple[str, ...]:
    """What `url` must never show: the credentials, secret query values and each of their
    pieces between URL delimiters (what a parser that split the URL elsewhere would show)."""
    _, userinfo, rest = split_credentials(url)
    found: list[str] = []
    if userinfo is not None and _AMBIGUOUS.search(userinfo):
        found += [userinfo, rest]  # redact_url shows none of it
    elif userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon and _SAFE_USER.fullmatch(user) else userinfo)
    for item in rest.partition("?")[2].split("&"):
        name, _, value = item.partition("=")
        if name in _SECRET_PARAMS:
            found.append(value)
        elif name not in _SHOWN_PARAMS:
            found.append(item)
    pieces = {piece for secret in found for piece in _DELIMITERS.split(secret)}
    return tuple(sorted({*found, *pieces} - {""}, key=len, reverse=True))


def shows_secret(text: str, secrets: Iterable[str]) -> bool:
    return any(secret in text for secret in secrets)


_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(SharedAccessKey|SharedAccessSignature|AccountKey|password|passwd|pwd|secret|token"
    r"|sig)=[^;&\s]+"
)
"""``name=value`` pairs of connection strings (Service Bus, storage) and query strings."""


def redact_text(text: str) -> str:
    """`text` with every URL and every secret ``name=value`` pair in it redacted (for log
    lines and health reasons)."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    return _SECRET_ASSIGNMENT.sub(lambda match: f"{match.group(1)}={MASK}", text)
