"""Liveness checking on top of :meth:`Channel.ping`."""

from __future__ import annotations

import trio

from ._channel import Channel

__all__ = ["wait_heartbeat_lost"]


async def wait_heartbeat_lost(channel: Channel, *, interval: float, ping_timeout: float) -> None:
    """Ping ``channel`` every ``interval`` seconds; return when a ping goes unanswered.

    Returns once a Pong has not arrived ``ping_timeout`` seconds after its Ping was queued
    and nothing else arrived from the peer meanwhile: the peer's event loop is stuck (a
    blocking call, a deadlock) or the peer is wedged in a way that keeps its end of the
    stream open. A peer that keeps sending is alive even when its Pong is late: the Pong
    waits behind what the peer sent before it (a flood of notifications we consume more
    slowly than it produces them is backpressure, not a hang). Raises
    :class:`ChannelClosed` or :class:`ChannelBroken` if the channel ends first — that is
    not a heartbeat problem.
    """
    while True:
        await trio.sleep(interval)
        asked = trio.current_time()
        try:
            await channel.ping(timeout=ping_timeout)
        except trio.TooSlowError:
            heard = channel.last_received_at
            if heard is None or heard <= asked:
                return
