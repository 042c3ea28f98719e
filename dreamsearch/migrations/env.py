"""Alembic environment: runs on the connection dreamsearch hands over (one transaction)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True, transactional_ddl=True)
context.run_migrations()
