"""tidesync.store."""
