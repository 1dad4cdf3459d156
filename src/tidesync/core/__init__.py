"""The pure core: clocks, values, operations, transactions and merge rules.

Nothing in this package does I/O: no files, sockets, threads, clocks or randomness. Time
enters through the wall-time callable given to :class:`~tidesync.core.clock.HybridClock`,
randomness through ids passed in.
"""
