"""portio's benchmark: the echo server against its peers, and micro-benchmarks of every backend.

Run it with ``python -m portio.bench`` (``--quick`` for a run under two minutes).  The pieces:
:mod:`~portio.bench.loadgen` (the C load generator), :mod:`~portio.bench.peers` (asyncio, uvloop,
trio and selectors echo servers), :mod:`~portio.bench.servers` (starting servers and reading the
OS's accounting of them), :mod:`~portio.bench.suite` (interleaved runs, medians, pairwise ratios,
the targets), :mod:`~portio.bench.micro`, :mod:`~portio.bench.report` and :mod:`~portio.bench.cli`.
"""
