"""Storage behind small role interfaces; one SQLAlchemy implementation for SQLite and PostgreSQL."""
