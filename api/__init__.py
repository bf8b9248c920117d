"""The HTTP API: a Starlette app that translates HTTP to calls of :mod:`shared` (no SQL, no business rules).

Modules: :mod:`.app` (the app and its lifespan), :mod:`.server` (uvicorn), :mod:`.services` (lazy
Postgres/Redis connections), :mod:`.errors` (errors → responses), :mod:`.auth`, :mod:`.requests` (bodies and
validation), and one module per group of endpoints (callback URLs are checked by :mod:`shared.callback_urls`).
"""
