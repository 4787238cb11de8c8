"""Real processes for the tests and the benchmarks: redis-server, PostgreSQL and every Sluice
service started as ``python -m services.<name>``, and the one way both wait on a condition.

Both ``tests/`` and ``bench/`` import this package and it imports neither: the tests may test
the benchmarks' code without the benchmarks depending on the tests. It is not part of the
product (``services/``, ``shared/``) and is not installed with it.
"""
