"""Shared access signature checks of the loopback Service Bus broker (admin HTTP and CBS).

A SAS token is ``SharedAccessSignature sr=<uri>&sig=<base64 HMAC-SHA256>&se=<expiry>&skn=<key
name>``, signed over ``quote_plus(uri) + "\\n" + expiry`` with the named key. Tokens of any other
kind (an Entra ID token from a credential) cannot be checked here and are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, quote_plus

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
        fields = {k: v[-1] for k, v in parse_qs(token[len(_PREFIX) :], strict_parsing=True).items()}
        uri, signature, expiry = fields["sr"], fields["sig"], int(fields["se"])
        key = keys.get(fields.get("skn", ""))
    except (KeyError, ValueError):
        return "MalformedToken: The credentials contained in the authorization header are not in the SharedAccessSignature format."
    if key is None:
        return _INVALID
    expected = base64.b64encode(
        hmac.new(key.encode(), f"{quote_plus(uri)}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode()
    if not hmac.compare_digest(expected, signature):
        return _INVALID
    if expiry < now:
        return "ExpiredToken: The token is expired."
    return None
