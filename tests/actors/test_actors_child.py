"""The child's side (open_parent_channel), driven in-process over real pipes."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest
import trio

from actors import (
    CHANNEL_FDS_ENV,
    STOP_METHOD,
    ActorError,
    Channel,
    open_parent_channel,
)


async def echo(method: str, body: msgspec.Raw) -> Any:
    return msgspec.msgpack.decode(body)


def parent_side(monkeypatch: pytest.MonkeyPatch) -> Channel:
    """Make the pipes a parent would, advertise the child's ends, return the parent end."""
    child_read, parent_write = os.pipe()
    parent_read, child_write = os.pipe()
    monkeypatch.setenv(CHANNEL_FDS_ENV, f"{child_read},{child_write}")
    return Channel(
        trio.lowlevel.FdStream(parent_write),
        trio.lowlevel.FdStream(parent_read),
        name="parent",
        on_request=echo,
    )


async def test_serves_requests_and_routes_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests reach on_request; the stop notification sets stop_requested instead of
    reaching on_notify, which gets every other notification; the fds env var is consumed."""
    parent = parent_side(monkeypatch)
    notes: list[str] = []
    got_note = trio.Event()

    async def on_notify(method: str, body: msgspec.Raw) -> None:
        notes.append(method)
        got_note.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(parent.run)
            async with open_parent_channel(
                name="child", on_request=echo, on_notify=on_notify, on_parent_lost=lambda: None
            ) as link:
                assert CHANNEL_FDS_ENV not in os.environ
                assert msgspec.msgpack.decode(await parent.request("echo", 7)) == 7
                await parent.notify("hello", None)
                await got_note.wait()
                await parent.notify(STOP_METHOD, None)
                await link.stop_requested.wait()
            nursery.cancel_scope.cancel()
    assert notes == ["hello"]


async def test_parent_end_closing_calls_on_parent_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the parent's end of the pipe closes, on_parent_lost is called once (in a real
    child the default exits the process) and stop_requested is set."""
    parent = parent_side(monkeypatch)
    lost: list[bool] = []
    with trio.fail_after(5):
        async with open_parent_channel(
            name="child", on_request=echo, on_parent_lost=lambda: lost.append(True)
        ) as link:
            await parent.aclose()
            await link.stop_requested.wait()
    assert lost == [True]


async def test_leaving_on_purpose_is_not_parent_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the link ourselves must not be mistaken for losing the parent."""
    parent = parent_side(monkeypatch)
    lost: list[bool] = []
    with trio.fail_after(5):
        async with open_parent_channel(
            name="child", on_request=echo, on_parent_lost=lambda: lost.append(True)
        ):
            await trio.lowlevel.checkpoint()
        await parent.aclose()
    assert lost == []


async def test_missing_env_var_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process not started by open_process_actor gets an error naming the variable."""
    monkeypatch.delenv(CHANNEL_FDS_ENV, raising=False)
    with pytest.raises(ActorError, match=CHANNEL_FDS_ENV):
        async with open_parent_channel(name="child", on_request=echo):
            pass  # pragma: no cover
