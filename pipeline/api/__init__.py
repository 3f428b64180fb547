"""The HTTP API (Sanic): routers in `routes_v1`, `openai`, `events`, `meta`; the logic they share in the
other modules, one job each. `services/api.py` runs it; `app.create_app` builds it."""
