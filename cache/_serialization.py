"""Serialization of values for the distributed cache, and the L2 entry envelope.

The default `JsonSerializer` uses cattrs: JSON values and attrs classes, never pickle (a shared
Redis must not be a code-execution path). An L2 entry is ``b"HC1"`` + a JSON header line
(timestamp, logical expiration, type tag, tags) + the serializer's bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import attrs
import cattrs

logger = logging.getLogger(__name__)

_MAGIC = b"HC1"
_NATIVE = {t.__name__: t for t in (dict, list, str, int, float, bool, type(None))}


@runtime_checkable
class Serializer(Protocol):
    """Turns cache values into bytes for L2 and back."""

    def serialize(self, value: Any) -> bytes: ...

    def deserialize(self, data: bytes, value_type: type[Any] | None) -> Any:
        """`value_type` is what the caller asked for, or what the entry's type tag resolved to
        (`None`: return plain JSON values)."""
        ...

    def resolve(self, type_tag: str) -> type[Any] | None:
        """The class named by a type tag, if this serializer allows it; `None` otherwise."""
        ...


def type_tag(value: Any) -> str:
    cls = type(value)
    if cls.__name__ in _NATIVE and cls.__module__ == "builtins":
        return cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


class JsonSerializer:
    """JSON through one cattrs converter. Register the attrs classes L2 may hold with `types`
    (or pass `value_type=` on reads); other tags are treated as an L2 miss, never imported."""

    def __init__(
        self, *, converter: cattrs.Converter | None = None, types: Iterable[type[Any]] = ()
    ) -> None:
        self._converter = converter or cattrs.Converter()
        self._types: dict[str, type[Any]] = {}
        for cls in types:
            self.register(cls)

    def register(self, cls: type[Any]) -> None:
        """Allow entries tagged with `cls` to be structured back into `cls`."""
        if not attrs.has(cls):
            raise TypeError(f"JsonSerializer.register expects an attrs class, got {cls!r}")
        self._types[f"{cls.__module__}:{cls.__qualname__}"] = cls

    def resolve(self, type_tag: str) -> type[Any] | None:
        return _NATIVE.get(type_tag) or self._types.get(type_tag)

    def serialize(self, value: Any) -> bytes:
        return json.dumps(self._converter.unstructure(value), separators=(",", ":")).encode()

    def deserialize(self, data: bytes, value_type: type[Any] | None) -> Any:
        raw = json.loads(data)
        if value_type is None or value_type in (dict, list, str, int, float, bool, type(None)):
            return raw
        return self._converter.structure(raw, value_type)


@attrs.frozen
class DistributedEntry:
    """What L2 holds for a key: the value plus its metadata."""

    value: Any
    timestamp: float
    """When the value was made (seconds since the epoch): newer wins."""
    logical_expiration: float
    """When the value stops being fresh (it may stay longer for fail-safe)."""
    tags: tuple[str, ...] = ()
    """The entry's tags: a tag mark newer than `timestamp` makes it stale or gone."""
    etag: str | None = None
    last_modified: float | None = None
    """What the factory said of the value's version (`ctx.modified`), for a conditional
    refresh on any instance."""


def encode_entry(serializer: Serializer, entry: DistributedEntry) -> bytes:
    header: dict[str, Any] = {
        "ts": entry.timestamp,
        "exp": entry.logical_expiration,
        "t": type_tag(entry.value),
    }
    if entry.tags:
        header["tg"] = list(entry.tags)
    if entry.etag is not None:
        header["et"] = entry.etag
    if entry.last_modified is not None:
        header["lm"] = entry.last_modified
    return b"".join(
        (
            _MAGIC,
            json.dumps(header, separators=(",", ":")).encode(),
            b"\n",
            serializer.serialize(entry.value),
        )
    )


def decode_entry(
    serializer: Serializer, data: bytes, value_type: type[Any] | None, key: str
) -> DistributedEntry | None:
    """The entry in `data`, or `None` (logged) when it cannot be read back safely."""
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("unknown entry format (no HC1 marker)")
        header_bytes, _, payload = data[len(_MAGIC) :].partition(b"\n")
        header = json.loads(header_bytes)
        timestamp, expiration, tag = float(header["ts"]), float(header["exp"]), str(header["t"])
        cls = value_type or serializer.resolve(tag)
        if cls is None:
            logger.warning(
                "L2 entry %r holds a %s, which the serializer does not know: treated as a miss "
                "(pass value_type= or register the class with JsonSerializer(types=[...]))",
                key,
                tag,
            )
            return None
        value = serializer.deserialize(payload, cls)
        tags = _tags(header.get("tg"))
        etag = header.get("et")
        last_modified = header.get("lm")
        if not (etag is None or isinstance(etag, str)):
            raise ValueError("malformed etag in the entry header")
        if last_modified is not None:
            last_modified = float(last_modified)
    except Exception as exc:
        logger.warning("L2 entry %r cannot be decoded (%s): treated as a miss", key, exc)
        return None
    return DistributedEntry(value, timestamp, expiration, tags, etag, last_modified)


def _tags(raw: object) -> tuple[str, ...]:
    """The header's tags; anything but a list of strings is refused (the entry is a miss)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(tag, str) and tag for tag in raw):
        raise ValueError("malformed tags in the entry header")
    return tuple(raw)
