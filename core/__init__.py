"""MRC Studio core: reward schema, MRC model and pipeline, judges, SQLite store."""
