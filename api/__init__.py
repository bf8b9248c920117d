"""The HTTP API: a Starlette app that translates HTTP to calls of :mod:`shared` (no SQL, no business rules).

Modules: :mod:`.app` (the app and its lifespan), :mod:`.server` (uvicorn), :mod:`.services` (lazy
Postgres/Redis connections), :mod:`.errors` (errors → responses), :mod:`.auth`, :mod:`.requests` (bodies and
validation), :mod:`.callback_urls`, and one module per group of endpoints.
"""
