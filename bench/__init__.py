"""tidesync benchmarks: ``make bench`` (or ``python -m bench``) runs them; see bench/RESULTS.md.

Every benchmark is a ratio against stdlib ``sqlite3`` measured in the same run, never an
absolute timing assertion. Each case runs in its own subprocess (:mod:`bench.local`) so memory
figures and garbage-collector state do not leak from one case into the next.
"""
