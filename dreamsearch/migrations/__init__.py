"""Alembic migrations of the catalog, applied automatically when a library is opened."""
