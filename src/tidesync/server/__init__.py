"""tidesync.server."""
