"""Settings of the test site: the pytest process (tests/contrib_django/conftest.py) and the
server processes the tests start (``--settings=tests.contrib_django.testsite.settings``)."""

from __future__ import annotations

import os
import uuid

SECRET_KEY = os.environ.get(
    "TEST_DJANGO_SECRET_KEY", "test-only-secret-key-of-the-django-integration"
)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
INSTALLED_APPS = [
    "eventbroker.contrib.django",
    "tests.contrib_django.django_cache_suite",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ROOT_URLCONF = "tests.contrib_django.testsite.urls"
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIX = os.environ.get("TEST_DJANGO_KEY_PREFIX") or f"test-django-{uuid.uuid4().hex}"
CACHES = {
    "default": {
        "BACKEND": "cache.contrib.django.HybridCacheBackend",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIX,
    }
}
# the broker: EVENTBROKER_* variables (the server tests set them; the pytest process overrides)
EVENTBROKER: dict[str, object] = {}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "eventbroker.contrib": {"handlers": ["console"], "level": "INFO"},
        "cache.contrib.django": {"handlers": ["console"], "level": "WARNING"},
    },
}
