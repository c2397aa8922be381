"""A chaos run: consumer processes, a producer and faults against one redis-server.

Consumers are killed, stalled and cut off from their keyspace events while the
server restarts under them; afterwards the checker proves from what everyone
recorded in Redis that every data stream was finished exactly once, that every
message was written, and that no write of a fenced-out holder was accepted.
Run it with ``python -m tests.chaos --help``, or through pytest.
"""
