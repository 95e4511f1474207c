"""Django's own cache tests (`BaseCacheTests`), vendored from the Django sdist with its license:
see the header of base_tests.py for what was left out and changed. Also the Django app whose
model (`Poll`) those tests cache."""
