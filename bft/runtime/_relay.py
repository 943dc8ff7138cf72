"""A loopback TCP relay that can be cut: how an in-process cluster simulates a network partition.

``open_local_cluster(..., relayed=True)`` routes every replica-to-replica link
through one ``Relay`` per direction.  Cutting a relay closes the connections it
carries and refuses new ones until it is restored, which is what a partition
looks like to the replicas: real TCP failures, with no test-only code in the
nodes themselves.
"""

from __future__ import annotations

import trio

from ._transport import Address

RELAY_CHUNK_BYTES = 64 * 1024
MAX_RELAYED_CONNECTIONS = 16


class Relay:
    """Forwards connections from its own listener to ``target`` while it is not cut."""

    def __init__(self, target: Address) -> None:
        self.target = target
        self.cut = False
        self.port: int | None = None
        self._connections: set[trio.CancelScope] = set()

    def set_cut(self, cut: bool) -> None:
        """Cut (close every connection now and refuse new ones) or restore the relay."""
        self.cut = cut
        if cut:
            for scope in self._connections:
                scope.cancel()

    async def run(self, listener: trio.SocketListener, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.port = listener.socket.getsockname()[1]
        async with listener, trio.open_nursery() as nursery:
            task_status.started(self.port)
            while True:
                stream = await listener.accept()
                if self.cut or len(self._connections) >= MAX_RELAYED_CONNECTIONS:
                    await trio.aclose_forcefully(stream)
                    continue
                scope = trio.CancelScope()
                self._connections.add(scope)
                nursery.start_soon(self._forward, stream, scope)

    async def _forward(self, inbound: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            with scope:
                try:
                    outbound = await trio.open_tcp_stream(*self.target)
                except OSError:
                    return
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, inbound, outbound, nursery.cancel_scope)
                        nursery.start_soon(_pump, outbound, inbound, nursery.cancel_scope)
                finally:
                    await trio.aclose_forcefully(outbound)
        finally:
            self._connections.discard(scope)
            await trio.aclose_forcefully(inbound)


async def _pump(source: trio.SocketStream, destination: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Copy bytes until either side ends; then end the other direction too."""
    try:
        while data := await source.receive_some(RELAY_CHUNK_BYTES):
            await destination.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()
