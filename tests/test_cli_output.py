"""What the CLI prints is safe: wire text cannot drive the terminal, configured secrets never show."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from eventbroker._cli._common import Output, Redactor, duration, printable

SECRET_ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters=",;=")


@given(st.text())
def test_printable_output_has_no_control_or_format_characters(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


@given(
    secret=st.text(SECRET_ALPHABET, min_size=16, max_size=40).filter(lambda s: s.strip() == s),
    key=st.text(st.characters(whitelist_categories=("L", "N")), min_size=16, max_size=44),
    around=st.text(max_size=20),
)
def test_configured_secrets_never_show_in_text_or_json_lines(
    secret: str, key: str, around: str
) -> None:
    connection = (
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey={key}"
    )
    redactor = Redactor(
        {
            "EVENTBROKER_SECRET": f"{secret},old-secret-0123456789",
            "EVENTBROKER_SERVICEBUS_CONNECTION_STRING": connection,
        }
    )
    for mode in (False, True):
        stream = io.StringIO()
        out = Output(mode, redactor, stream)
        text = f"{around}{secret}{around} {key} {connection}"
        out.emit({"detail": text, "nested": [{"k": secret}], secret: key}, text)
        written = stream.getvalue()
        decoded = json.dumps(json.loads(written), ensure_ascii=False) if mode else written
        for hidden in (secret, key, "old-secret-0123456789"):
            assert hidden not in written and hidden not in decoded


def test_durations_read_well() -> None:
    assert [duration(s) for s in (None, 0.0123, 3.25, 42, 600, 7200, 200_000)] == [
        "-",
        "12 ms",
        "3.2 s",
        "42 s",
        "10 min",
        "2 h 0 min",
        "2 d 7 h",
    ]
