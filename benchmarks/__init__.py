"""Benchmarks of rsc_async against simpler designs, measured in one run.

``python -m benchmarks`` runs all of them and prints one table;
``python -m benchmarks heartbeat`` (or ``throughput``, ``takeover``,
``cluster``, ``stall``) runs one; ``--quick`` makes a smoke run of a minute or
two. Every benchmark starts its own ``redis-server`` (the cluster benchmark, a
local cluster) on free ports and stops it after; figures that are compared are
measured in the same run, as the machine they run on is shared.

- :mod:`benchmarks.heartbeat`: the cost of holding many streams;
- :mod:`benchmarks.throughput`: assigning and finishing LBS entries;
- :mod:`benchmarks.takeover`: how soon a dead consumer's streams are claimed;
- :mod:`benchmarks.cluster`: holding and takeover on a Redis Cluster;
- :mod:`benchmarks.stall`: how long a blocked event loop keeps its locks.

See BENCHMARKS.md for what each measures and a reading of a full run.
"""
