"""tidesync.core.merge."""
