"""tidesync.cli."""
