"""tidesync.protocol."""
