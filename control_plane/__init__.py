"""The control plane: it wires every other package together.

What belongs here: settings, the store (SQLAlchemy 2; SQLite by default, PostgreSQL
for HA), the artifact store, the federation runtime (one adapter per site, inventory,
health), the reconciler, the FastAPI app, the Python client, the embedded broker, the
``continuum`` CLI and the demo. What does not: placement logic (``placement``),
backend protocols (``adapters``), the device daemon (``edge_agent``).
"""
