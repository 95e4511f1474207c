"""What a cache key may be: a `str` that every layer can carry (L1, Redis, the backplane)."""

from __future__ import annotations


def check_key(key: object, what: str = "cache key") -> None:
    """Raise `TypeError` unless `key` is a `str`, `ValueError` unless it encodes as UTF-8 (a lone
    surrogate such as ``"\\ud800"`` does not: Redis and the backplane could not carry it)."""
    if not isinstance(key, str):
        raise TypeError(f"{what} must be str, got {type(key).__name__}: {key!r}")
    if key.isascii():
        return
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} {key!r} cannot be encoded as UTF-8 ({exc.reason}: {key[exc.start]!r} at "
            f"position {exc.start}), so no distributed cache or backplane can carry it; lone "
            "surrogates usually come from bytes decoded with errors='surrogateescape': build "
            "the key from properly decoded text"
        ) from None
