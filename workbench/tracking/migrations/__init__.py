"""Alembic migrations of the tracking database; applied by ``workbench db upgrade``."""
