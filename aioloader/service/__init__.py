"""The loader out of the trainer's process: in a child process, or served over the network.

- ``protocol.py``: frames (prefix + JSON header + raw body), limits, HMAC token authentication.
- ``codec.py``: batches as a JSON tree plus raw tensor bytes (never pickled on the network).
- ``cursor.py``: epoch and resume bookkeeping on the consumer's side of a remote loader.
- ``specs.py``: per-rank loaders, state checks by a twin loader, specs pickled or loaded from a file.
- ``server.py``: ``serve(loader, ...)``: the asyncio server, credits, heartbeats, per-rank loaders.
- ``client.py``: ``connect(address, ...)``: a Loader-like client (sync and async iteration).
- ``subprocess_loader.py`` / ``_child.py``: ``Loader.in_subprocess()``: the pipeline in a child
  process, batches handed over through shared memory.
"""

from aioloader.service.client import Client, connect
from aioloader.service.protocol import AuthenticationError, ProtocolError, RemoteError, ServerBusyError
from aioloader.service.server import Server, serve

__all__ = [
    "AuthenticationError",
    "Client",
    "ProtocolError",
    "RemoteError",
    "Server",
    "ServerBusyError",
    "connect",
    "serve",
]
