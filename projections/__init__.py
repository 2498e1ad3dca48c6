"""DuckDB projections of the event log."""
