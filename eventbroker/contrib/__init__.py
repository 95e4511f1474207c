"""Optional framework integrations of the event broker. Each module imports its framework only
when imported itself, and names the extra to install when the framework is missing:

- `eventbroker.contrib.starlette`: the lifespan helper and health route for Starlette and FastAPI
  (``pip install "eventbroker-cache[starlette]"``; FastAPI already ships Starlette).
- `eventbroker.contrib.django`: the Django app (``INSTALLED_APPS``) that runs the broker, the
  caches' backplane and the job scheduler in serving processes, with a health view
  (extra ``django``).
- `eventbroker.contrib.otel`: OpenTelemetry metrics and traces of the broker, the caches and the
  job scheduler (``pip install "eventbroker-cache[otel]"``).
"""
