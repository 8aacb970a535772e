"""The running graph: one run is one epoch of a Loader spec.

Stages are small coroutines joined by bounded :class:`~aioloader._run.channel.Channel`
objects; :mod:`~aioloader._run.graph` builds them from the spec and supervises them as one
task group; :mod:`~aioloader._run.bridge` runs a graph on a background event-loop thread for
synchronous consumers.
"""
