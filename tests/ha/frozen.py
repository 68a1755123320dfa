"""A TCP proxy in front of the fake HA that can be frozen, for a Home Assistant that stops
answering without closing anything (SIGSTOP, a hung host): its kernel still accepts new
connections and buffers what is sent, but nothing is read or answered."""

from __future__ import annotations

from functools import partial

import trio


class FreezableProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``freeze()`` stops forwarding
    in both directions (sockets stay open, new connections are still accepted),
    ``thaw()`` resumes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        #: Connections accepted so far.
        self.accepted = 0
        self._thawed = trio.Event()
        self._thawed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        frozen = "frozen" if not self._thawed.is_set() else "thawed"
        return f"<FreezableProxy :{self.port} -> :{self.target} {frozen} {self.accepted}>"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/websocket"

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    def freeze(self) -> None:
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self._thawed.set()

    async def wait_accepted(self, n: int) -> None:
        """Until ``n`` connections have been accepted in total (the caller bounds it)."""
        while self.accepted < n:
            await self._changed.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        self._changed.set()
        self._changed = trio.Event()
        await self._thawed.wait()  # frozen: accepted by the kernel, never served
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._thawed.wait()
                data = await source.receive_some()
                if not data:
                    break
                await self._thawed.wait()  # frozen with data in hand: hold it
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side ended: end both, as the kernel would
