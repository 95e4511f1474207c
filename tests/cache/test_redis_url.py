"""Redis URLs: no password in any error, repr, log line or health reason; bad URLs fail naming
what is wrong (with the credentials redacted)."""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache import CacheError, CacheOptions, DistributedCacheError, EntryOptions, HybridCache
from cache.redis import RedisDistributedCache

from .conftest import Counter, FakeClock

TOKEN = st.text("abcdef0123456789", min_size=4, max_size=8).map(lambda s: "Zq" + s)
"""A piece of a password: nothing else in a URL or a message starts with "Zq"."""


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line of the `cache` package, formatted with its exception (if any)."""
    lines: list[str] = []
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("cache")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def shown(exc: BaseException) -> str:
    """All a traceback shows: the error, its chain, their messages."""
    return "".join(traceback.format_exception(exc))


@st.composite
def redis_urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(url, secret tokens): user+password, password only, a lone userinfo, a password query
    parameter; redis, rediss and unix schemes; good and bad ports and databases; passwords
    with characters that should have been percent-encoded."""
    tokens = draw(st.lists(TOKEN, min_size=1, max_size=3))
    glue = draw(st.lists(st.sampled_from(["", "/", "?", "#", "@", ":", "%", "&", "="]), min_size=2))
    password = "".join(t + g for t, g in zip(tokens, glue, strict=False)).rstrip("/?#@:%&=")
    password = password or tokens[0]
    user = draw(st.sampled_from(["", "default", "app-user"]))
    form = draw(st.sampled_from(["user:password", "password-only", "lone", "query"]))
    userinfo = {
        "user:password": f"{user}:{password}@",
        "password-only": f":{password}@",
        "lone": f"{password.replace(':', '')}@",  # with a ":" its first part is a user name
        "query": "",
    }[form]
    scheme = draw(st.sampled_from(["redis", "rediss", "unix"]))
    db = draw(st.sampled_from(["0", "3", "x", "", "-1"]))
    query = f"?password={password}" if form == "query" else ""
    if scheme == "unix":
        sep = "&" if query else "?"
        url = f"unix://{userinfo}/tmp/redis.sock{query}{sep}db={db}"
    else:
        port = draw(st.sampled_from([":6379", ":badport", ":99999", ""]))
        url = f"{scheme}://{userinfo}127.0.0.1{port}/{db}{query}"
    return url, tokens


@settings(max_examples=300, deadline=None)
@given(case=redis_urls())
def test_no_password_in_errors_reprs_or_logs(case: tuple[str, list[str]]) -> None:
    url, tokens = case
    texts: list[str] = []
    with captured_logs() as logs:
        try:
            l2 = RedisDistributedCache(url)
        except ValueError as exc:
            texts += [shown(exc), repr(exc)]
            assert "Redis URL" in str(exc)
        else:
            texts += [repr(l2), str(l2), l2.redacted_url, l2.description]
            assert "url" not in vars(l2)  # the real URL is private
            l2.close()
    texts += logs
    for text in texts:
        for token in tokens:
            assert token not in text, f"{token!r} of {url!r} shown in {text!r}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:Zqsecret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:Zqsecret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://Zqsecret@host/1", "rediss://***@host/1"),
        ("unix://:Zqsecret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        (
            "unix:///run/redis.sock?password=Zqsecret&db=2",
            "unix:///run/redis.sock?password=***&db=2",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redacted_url_keeps_what_is_not_secret(url: str, expected: str) -> None:
    l2 = RedisDistributedCache(url)
    assert l2.redacted_url == expected
    assert repr(l2) == f"RedisDistributedCache({expected!r})"
    l2.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://:Zqsecret@host:badport/0", "Port could not be cast"),
        ("redis://:Zqsecret@host:99999/0", "Port out of range"),
        ("redis://:Zqsecret@host:6379/x", "database"),
        ("redis://:Zqsecret@host:6379/-1", "database"),
        ("unix://:Zqsecret@/run/redis.sock?db=x", "'db'"),
        ("http://:Zqsecret@host/0", "scheme"),
        ("redis://:Zq/secret@host:6379/0", "percent-encode"),
    ],
)
def test_bad_url_names_the_problem_without_the_password(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        RedisDistributedCache(url)
    assert "Zq" not in shown(info.value)
    assert "***" in str(info.value)


def test_key_prefix_must_be_encodable() -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        RedisDistributedCache("redis://127.0.0.1:6379/0", key_prefix="\ud800:")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_failures_raise_distributed_cache_error_without_the_password() -> None:
    port = closed_port()
    l2 = RedisDistributedCache(f"redis://app:Zqsecret@127.0.0.1:{port}/0", connect_timeout=0.5)
    for call in (lambda: l2.get("k"), lambda: l2.set("k", b"v", 1), lambda: l2.remove("k")):
        with pytest.raises(DistributedCacheError, match=f"Redis 127.0.0.1:{port}") as info:
            call()
        assert isinstance(info.value, CacheError)
        assert "Zq" not in shown(info.value)
    with pytest.raises(DistributedCacheError) as info:
        await l2.get_async("k")
    assert "Zq" not in shown(info.value)
    await l2.close_async()


def test_outage_is_logged_and_reported_without_the_password(clock: FakeClock) -> None:
    port = closed_port()
    l2 = RedisDistributedCache(f"redis://app:Zqsecret@127.0.0.1:{port}/0", connect_timeout=0.5)
    with captured_logs() as logs:
        cache = HybridCache(
            CacheOptions(name="t", default_entry_options=EntryOptions(duration=5)),
            l2,
            clock=clock,
            owns_distributed_cache=True,
        )
        assert cache.get_or_set("k", Counter("v")) == "v"
        health = cache.health()
        cache.close()
    assert health.reasons and f"Redis 127.0.0.1:{port}" in health.reasons[0]
    assert logs
    for text in [*logs, str(health), repr(l2)]:
        assert "Zq" not in text
