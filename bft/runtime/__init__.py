"""The trio runtime: framing, authenticated TCP transport, replica nodes and the async client.

This is the only package that performs I/O or reads a clock.  It drives the
sans-IO core in ``bft.core`` and never makes protocol decisions of its own.
"""

from ._client import AsyncClient, Outcome, open_client
from ._connection import Backoff, FramedConnection, SendQueue, TokenBucket
from ._framing import HEADER_BYTES, FrameDecoder, encode_frame
from ._handshake import Identity
from ._local_cluster import LocalCluster, derive_keypair, open_local_cluster
from ._logging import JsonFormatter, configure_json_logging
from ._metrics import MetricsServer, ReplicaMetrics, serve_metrics
from ._node import ReplicaNode
from ._options import NodeOptions, RuntimeClock, TransportLimits
from ._transport import CONNECTION_ERRORS, Link

__all__ = [
    "AsyncClient", "Backoff", "CONNECTION_ERRORS", "FrameDecoder", "FramedConnection", "HEADER_BYTES", "Identity",
    "JsonFormatter", "Link", "LocalCluster", "MetricsServer", "NodeOptions", "Outcome", "ReplicaMetrics",
    "ReplicaNode", "RuntimeClock", "SendQueue", "TokenBucket", "TransportLimits", "configure_json_logging",
    "derive_keypair", "encode_frame", "open_client", "open_local_cluster", "serve_metrics",
]
