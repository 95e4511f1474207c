"""Optional framework integrations; each module imports its framework only when imported.

- `eventbroker.contrib.starlette`: the lifespan helper and health route for Starlette and FastAPI
  (``pip install "eventbroker-cache[starlette]"``; FastAPI already ships Starlette).
"""
