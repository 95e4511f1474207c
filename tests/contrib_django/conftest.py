"""Django for the tests of this folder: the test site's settings (no broker autostart in this
process), Django's test environment and an in-memory test database."""

from __future__ import annotations

from collections.abc import Iterator

import django
import pytest
from django.conf import settings

from .testsite import settings as site

if not settings.configured:
    settings.configure(
        **{name: getattr(site, name) for name in dir(site) if name.isupper()}
        | {"EVENTBROKER": {"AUTOSTART": False, "TRANSPORT": "memory"}}
    )
    django.setup()


@pytest.fixture(scope="session", autouse=True)
def django_test_environment() -> Iterator[None]:
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    setup_test_environment()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    yield
    connection.creation.destroy_test_db(name, verbosity=0)
    teardown_test_environment()
