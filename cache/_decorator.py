"""`@cache.cached(...)`: a function's result cached under a key made from its arguments.

```python
@cache.cached(key="product:{product_id}", tags=["products", "category:{category}"])
def load_product(product_id: int, category: str) -> dict[str, Any]: ...

@cache.cached()                       # key: "module.qualname(product_id=42)"
async def load_price(product_id: int) -> float: ...
```

* `key`: `None` builds the key from the function's module and qualified name and the `repr` of
  every bound argument (defaults applied); a `str` is a `str.format` template over the
  arguments by name (``"{user.id}"`` works); a callable gets the call's arguments and returns
  the key.
* `tags`: templates like `key`'s, or a callable returning the tags.
* `options`: the `EntryOptions` of every entry.

The wrapper keeps the function's name and docstring and has `cache_key(*args, **kwargs)`: the
key a call with those arguments uses (for `remove` or `expire`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._drivers import is_async_callable
from ._options import EntryOptions

if TYPE_CHECKING:
    from ._hybrid import HybridCache

P = ParamSpec("P")
R = TypeVar("R")

KeySpec = str | Callable[..., str] | None
TagsSpec = Iterable[str] | Callable[..., Iterable[str]] | None


def cached(
    cache: HybridCache, key: KeySpec, tags: TagsSpec, options: EntryOptions | None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The decorator `HybridCache.cached` returns."""
    if key is not None and not isinstance(key, str) and not callable(key):
        raise TypeError(f"cached(key=...) takes a str template or a callable, got {key!r}")
    if isinstance(tags, str):
        raise TypeError(f"cached(tags=...) takes a list of tags, got the string {tags!r}")
    templates = None if tags is None or callable(tags) else tuple(tags)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)
        name = f"{fn.__module__}.{fn.__qualname__}"

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{name}(): {exc}") from None
            bound.apply_defaults()
            return bound.arguments

        def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            if callable(key):
                return key(*args, **kwargs)
            bound = arguments(args, kwargs)
            if key is None:
                return f"{name}({', '.join(f'{k}={v!r}' for k, v in bound.items())})"
            return _format(key, bound, name, "key")

        def make_tags(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterable[str] | None:
            if tags is None:
                return None
            if callable(tags):
                return tags(*args, **kwargs)
            bound = arguments(args, kwargs)
            assert templates is not None
            return [_format(template, bound, name, "tag") for template in templates]

        if is_async_callable(fn):

            @functools.wraps(fn)
            async def call_async(*args: Any, **kwargs: Any) -> Any:
                async def load() -> Any:
                    return await cast(Callable[..., Any], fn)(*args, **kwargs)

                return await cache.get_or_set_async(
                    make_key(args, kwargs), load, options, tags=make_tags(args, kwargs)
                )

            wrapper: Any = call_async
        else:

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                return cache.get_or_set(
                    make_key(args, kwargs),
                    lambda: fn(*args, **kwargs),
                    options,
                    tags=make_tags(args, kwargs),
                )

            wrapper = call
        wrapper.cache_key = lambda *args, **kwargs: make_key(args, kwargs)
        return cast(Callable[P, R], wrapper)

    return decorate


def _format(template: str, arguments: dict[str, Any], name: str, what: str) -> str:
    try:
        return template.format(**arguments)
    except (KeyError, AttributeError, IndexError) as exc:
        raise ValueError(
            f"cached({what}={template!r}) on {name}: {exc!r} is not among its arguments "
            f"({', '.join(arguments) or 'none'}); name them in the template as {{argument}}"
        ) from None
