"""The factory context: what a factory that takes one argument receives (FusionCache's
`FusionCacheFactoryExecutionContext`).

```python
def load_product(ctx: FactoryContext[Product]) -> Product:
    response = http.get(url, headers={"If-None-Match": ctx.etag} if ctx.etag else {})
    if response.status_code == 304:
        return ctx.not_modified()            # keep the stale value, renewed
    if response.status_code >= 500:
        return ctx.fail("upstream is down")   # fail-safe applies, no exception needed
    product = Product(**response.json())
    ctx.options = ctx.options.duplicate(duration=300 if product.archived else 30)
    ctx.tags = [f"category:{product.category}"]
    return ctx.modified(product, etag=response.headers.get("ETag"))
```
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ._errors import FactoryFailedError
from ._keys import check_key
from ._options import EntryOptions

T = TypeVar("T")


class _NotModified:
    __slots__ = ()


class _Failure:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


_NOT_MODIFIED: Any = _NotModified()


class FactoryContext(Generic[T]):
    """What the factory of one load may read and change.

    `options` and `tags` start as the caller's and may be replaced (adaptive caching: the
    entry is stored with them). `has_stale_value`, `stale_value`, `etag` and `last_modified`
    describe the copy the cache holds (stale, or fresh during an eager refresh), for a
    conditional request. Return `not_modified()`, `modified(value, ...)`, `fail(message)` or
    just the value.
    """

    __slots__ = (
        "_tags",
        "etag",
        "has_stale_value",
        "key",
        "last_modified",
        "options",
        "stale_value",
    )

    def __init__(
        self,
        key: str,
        options: EntryOptions,
        tags: tuple[str, ...],
        has_stale_value: bool = False,
        stale_value: T | None = None,
        etag: str | None = None,
        last_modified: float | None = None,
    ) -> None:
        self.key = key
        """The cache key being loaded."""
        self.options = options
        """The entry options the value is stored with (replace to adapt them to the data)."""
        self._tags = tags
        self.has_stale_value = has_stale_value
        """Whether the cache holds an older value of the key (`stale_value`)."""
        self.stale_value = stale_value
        self.etag = etag
        """The ETag stored with the older value (`None`: none, or no older value)."""
        self.last_modified = last_modified
        """The Last-Modified time stored with the older value (seconds since the epoch)."""

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags the value is stored with (assign any iterable of tags to change them)."""
        return self._tags

    @tags.setter
    def tags(self, tags: Iterable[str]) -> None:
        self._tags = normalize_tags(tags)

    def not_modified(self) -> T:
        """Return this from the factory when the source says the older value is still good:
        it is kept and renewed for a full `duration` (a `ValueError` when there is none)."""
        if not self.has_stale_value:
            raise ValueError(
                f"not_modified() for cache key {self.key!r}, but the cache holds no older value: "
                "check ctx.has_stale_value first (and send no conditional request without it)"
            )
        return _NOT_MODIFIED  # type: ignore[no-any-return]

    def modified(
        self, value: T, *, etag: str | None = None, last_modified: float | None = None
    ) -> T:
        """Return this from the factory to store `value` with its `etag` / `last_modified`
        (seconds since the epoch), offered to the next conditional refresh."""
        self.etag, self.last_modified = etag, last_modified
        return value

    def fail(self, message: str) -> T:
        """Return this from the factory to fail without raising: fail-safe serves the stale
        value (or `fail_safe_default_value`); with nothing to serve the caller gets a
        `FactoryFailedError(message)`."""
        return _Failure(message)  # type: ignore[return-value]

    def resolve(self, returned: Any) -> tuple[Any, BaseException | None]:
        """(value, None) for what the factory returned, or (None, error) for `fail()`."""
        if returned is _NOT_MODIFIED:
            return self.stale_value, None
        if isinstance(returned, _Failure):
            return None, FactoryFailedError(
                f"the factory for cache key {self.key!r} failed: {returned.message}"
            )
        return returned, None


def normalize_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    """Tags as a tuple without duplicates; each a non-empty str a backplane can carry."""
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise TypeError(
            f"tags must be a list of strings, got the string {tags!r}: write tags=[{tags!r}]"
        )
    result: list[str] = []
    for tag in tags:
        check_key(tag, "tag")
        if not tag:
            raise ValueError("a tag must not be empty")
        if tag not in result:
            result.append(tag)
    return tuple(result)


def takes_context(factory: Callable[..., Any]) -> bool:
    """Whether `factory` takes exactly one required positional argument: the `FactoryContext`
    (read from the code object for functions and methods; cheap on every miss)."""
    fn = factory.__func__ if inspect.ismethod(factory) else factory
    if isinstance(fn, types.FunctionType):
        required = fn.__code__.co_argcount - len(fn.__defaults__ or ())
        return required - (fn is not factory) == 1
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    required_params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required_params) == 1
