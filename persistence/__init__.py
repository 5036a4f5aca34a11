"""Persistence: database engine, tables, migrations and the inference log."""
