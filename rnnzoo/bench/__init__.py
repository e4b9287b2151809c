"""Benchmarks and tools behind the ``rnnzoo`` command: :mod:`rnnzoo.bench.speed` times layers and engines,
:mod:`rnnzoo.bench.inspect` plots a layer's implicit operator.

Nothing here is imported by ``import rnnzoo``; ``rich`` is imported only when a report is printed,
matplotlib only when a plot is drawn.
"""
