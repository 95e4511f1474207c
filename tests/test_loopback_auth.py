"""Shared access signatures as the loopback broker checks them."""

from __future__ import annotations

import time

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
