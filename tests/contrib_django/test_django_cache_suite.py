"""Django's own cache test suite (`BaseCacheTests`, vendored) on `HybridCacheBackend` over the
real Redis at 127.0.0.1:6379, under a key prefix of its own.

Every test of `BaseCacheTests` runs; three skip themselves as they do for Django's own Redis
backend: test_cull, test_zero_cull and test_cull_delete_when_store_empty need the "cull" and
"zero_cull" aliases (OPTIONS MAX_ENTRIES / CULL_FREQUENCY culling the *store*), which a Redis
store does not do; MAX_ENTRIES bounds the memory layer here, and Redis evicts by its own policy.
"""

from __future__ import annotations

import uuid

from django.core.cache import caches
from django.test import TestCase, override_settings

from .django_cache_suite.base_tests import BaseCacheTests, caches_setting_for_tests
from .testsite.settings import REDIS_URL

BACKEND = {
    "BACKEND": "cache.contrib.django.HybridCacheBackend",
    "LOCATION": REDIS_URL,
    "KEY_PREFIX": f"test-django-suite-{uuid.uuid4().hex}",
}


@override_settings(CACHES=caches_setting_for_tests(base=BACKEND, exclude={"cull", "zero_cull"}))
class HybridCacheBackendTests(BaseCacheTests, TestCase):  # type: ignore[misc]
    def tearDown(self) -> None:
        super().tearDown()
        caches["prefix"].clear()  # the other prefix the suite writes under
