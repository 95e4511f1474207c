"""Validate a Service Bus connection string without ever echoing its secrets."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ._errors import ConnectionStringError

_KNOWN = {
    "endpoint",
    "sharedaccesskeyname",
    "sharedaccesskey",
    "sharedaccesssignature",
    "entitypath",
    "usedevelopmentemulator",
}
_EXAMPLE = "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<name>;SharedAccessKey=<key>"


@attrs.frozen
class ConnectionStringInfo:
    """The non-secret parts of a parsed connection string."""

    host: str
    """Host (and port, for the development emulator), as the SDK addresses it."""
    entity_path: str | None
    development_emulator: bool


def parse_connection_string(value: str) -> ConnectionStringInfo:
    """Check `value` and return its non-secret parts; raise `ConnectionStringError` if bad."""
    if not value.strip():
        raise ConnectionStringError(
            f"the Service Bus connection string is empty; expected {_EXAMPLE}"
        )
    settings: dict[str, str] = {}
    for index, part in enumerate(p for p in value.strip().rstrip(";").split(";") if p.strip()):
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise ConnectionStringError(
                f"the Service Bus connection string is malformed: part {index + 1} is not "
                f"'Name=value'; expected {_EXAMPLE}"
            )
        name = key.strip().lower()
        if name not in _KNOWN:
            raise ConnectionStringError(
                f"the Service Bus connection string has an unknown setting {key.strip()!r}; "
                f"expected {_EXAMPLE}"
            )
        settings[name] = val.strip()
    endpoint = settings.get("endpoint", "")
    if not endpoint:
        raise ConnectionStringError(
            f"the Service Bus connection string has no Endpoint; expected {_EXAMPLE}"
        )
    parts = urlsplit(endpoint)
    if parts.scheme != "sb" or not parts.hostname:
        raise ConnectionStringError(
            "the Service Bus connection string's Endpoint must look like "
            f"'sb://<namespace>.servicebus.windows.net/' (got scheme {parts.scheme or 'none'!r})"
        )
    has_key = bool(settings.get("sharedaccesskeyname")) and bool(settings.get("sharedaccesskey"))
    if not has_key and not settings.get("sharedaccesssignature"):
        raise ConnectionStringError(
            "the Service Bus connection string needs SharedAccessKeyName and SharedAccessKey "
            "(or SharedAccessSignature); copy it whole from the namespace's "
            "'Shared access policies' page, or use fully_qualified_namespace with a credential"
        )
    emulator_flag = settings.get("usedevelopmentemulator", "false").lower()
    if emulator_flag not in ("true", "false"):
        raise ConnectionStringError(
            "the Service Bus connection string's UseDevelopmentEmulator must be 'true' or 'false'"
        )
    emulator = emulator_flag == "true"
    host = parts.netloc if emulator else parts.hostname
    return ConnectionStringInfo(
        host=host, entity_path=settings.get("entitypath") or None, development_emulator=emulator
    )
