"""Benchmarks behind the ``rnnzoo`` command: :mod:`rnnzoo.bench.speed` times layers and engines.

Nothing here is imported by ``import rnnzoo``; ``rich`` is imported only when a report is printed.
"""
