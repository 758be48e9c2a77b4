"""Alembic's environment: runs the migrations on the connection the caller put in
``config.attributes["connection"]`` (:mod:`control_plane.migrations`), or on
``$CONTINUUM_DATABASE_URL`` when a developer runs the ``alembic`` command itself."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from control_plane.store import Base

connection = context.config.attributes.get("connection")
target = Base.metadata

if connection is not None:
    context.configure(connection=connection, target_metadata=target,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
elif context.is_offline_mode():
    context.configure(url=os.environ["CONTINUUM_DATABASE_URL"], target_metadata=target,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(os.environ["CONTINUUM_DATABASE_URL"])
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target,
                          render_as_batch=conn.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
