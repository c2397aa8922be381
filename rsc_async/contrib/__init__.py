"""Adapters from :class:`rsc_async.MetricsRecorder` to metrics libraries.

Each lives in its own module and needs its own extra:

- :mod:`rsc_async.contrib.prometheus`: ``pip install rsc-async[prometheus]``;
- :mod:`rsc_async.contrib.otel`: ``pip install rsc-async[otel]``.

Neither labels a metric with the data stream's name: stream names are
unbounded, and one time series per stream would swamp the metrics backend.
"""
