"""tidesync.query."""
