"""Word association norms: parsing, loading into PostgreSQL, lookup."""
