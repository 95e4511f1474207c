"""Shared access signature checks of the loopback Service Bus broker (admin HTTP and CBS).

A SAS token is ``SharedAccessSignature sr=<uri>&sig=<base64 HMAC-SHA256>&se=<expiry>&skn=<key
name>``, signed with the named key over ``sr`` exactly as the token writes it (the SDK writes
``quote_plus(uri)``, some of Microsoft's samples the bare URI) + ``"\\n"`` + ``se``. Tokens of
any other kind (an Entra ID token from a credential) cannot be checked here and are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import unquote_plus

__all__ = ["check_token"]

_PREFIX = "SharedAccessSignature "
_INVALID = "InvalidSignature: The token has an invalid signature."


def check_token(token: str, keys: Mapping[str, str], now: float) -> str | None:
    """None when ``token`` is acceptable, else why not (in Service Bus' words).

    ``keys`` maps shared access key names to keys. Never raises: the token is hostile input.
    """
    if not token.startswith(_PREFIX):
        return None
    try:
        raw = dict(part.split("=", 1) for part in token[len(_PREFIX) :].split("&"))
        resource, expiry_text = raw["sr"], raw["se"]
        signature = unquote_plus(raw["sig"])
        expiry = int(expiry_text)
        key = keys.get(unquote_plus(raw.get("skn", "")))
    except (KeyError, ValueError):
        return "MalformedToken: The credentials contained in the authorization header are not in the SharedAccessSignature format."
    if key is None:
        return _INVALID
    signed = f"{resource}\n{expiry_text}".encode()
    expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return _INVALID
    if expiry < now:
        return "ExpiredToken: The token is expired."
    return None
