"""Shared access signatures as the loopback broker checks them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote

from azure.servicebus._pyamqp.utils import generate_sas_token
from hypothesis import given
from hypothesis import strategies as st

from eventbroker.testing._servicebus_auth import check_token

KEYS = {"app": "s3cret"}
NOW = time.time()


def test_a_token_signed_with_the_key_is_accepted_until_it_expires() -> None:
    token = generate_sas_token("sb://127.0.0.1:5672/topic", "app", "s3cret", int(NOW) + 60)
    assert check_token(token, KEYS, NOW) is None
    assert check_token(token, KEYS, NOW + 120) == "ExpiredToken: The token is expired."


def test_a_wrong_key_or_key_name_is_refused() -> None:
    for name, key in (("app", "other"), ("nobody", "s3cret")):
        token = generate_sas_token("sb://127.0.0.1:5672/topic", name, key, int(NOW) + 60)
        assert (check_token(token, KEYS, NOW) or "").startswith("InvalidSignature")


def test_a_token_from_a_credential_cannot_be_checked_and_passes() -> None:
    assert check_token("eyJ0eXAiOiJKV1QifQ.e30.sig", KEYS, NOW) is None


@given(st.text())
def test_any_text_after_the_prefix_is_refused_without_raising(text: str) -> None:
    assert check_token("SharedAccessSignature " + text, KEYS, NOW) is not None


def test_the_signature_covers_the_resource_as_written_in_the_token() -> None:
    """Service Bus signs ``sr`` as it appears in the token: the SDK URL-encodes it first,
    the SDK's own sample (authenticate_using_azure_sas_credential) does not. Both pass."""
    uri = "sb://127.0.0.1:5672/queue"
    expiry = str(int(NOW) + 60)
    digest = hmac.new(b"s3cret", f"{uri}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest))
    token = f"SharedAccessSignature sr={uri}&sig={signature}&se={expiry}&skn=app"
    assert check_token(token, KEYS, NOW) is None
    assert (check_token(token.replace("skn=app", "skn=nobody"), KEYS, NOW) or "").startswith(
        "InvalidSignature"
    )


def test_a_non_ascii_signature_is_refused_without_raising() -> None:
    token = f"SharedAccessSignature sr=x&sig=%C3%A9&se={int(NOW) + 60}&skn=app"
    assert (check_token(token, KEYS, NOW) or "").startswith("InvalidSignature")
