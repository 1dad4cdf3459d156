"""tidesync.client."""
