"""The Alembic migrations, shipped as `gateway.migrations`."""
