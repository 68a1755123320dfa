"""The sandbox: what a guest cannot reach, with healthy modules watched beside it."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import wasmtime
from wasmtime import _ffi as wasmtime_ffi
from wasmtime import component as wc

from tests.fixture_types import MakeModuleDir
from tests.runtime.harness import call, next_event, running_daemon, wait_until
from vessel._manager import ModuleState
from vessel.host import _engine

from ._figures import Figures
from ._healthy import healthy_modules, watch_healthy
from ._netprobe import netprobe_manifest, netprobe_wasm
from ._resources import memory_limited
from .test_hostile_guests import HOSTILE, POLICY, scenario

#: What the store answers each wasi:sockets step of the netprobe: no TCP or UDP socket
#: can even be created (so connect and bind never run), and name lookup is off.
SOCKETS_DENIED = {
    "create": "access-denied",
    "connect": "no-socket",
    "bind": "no-socket",
    "udp": "access-denied",
    "lookup": "permanent-resolver-failure",
}
#: Every network permission a manifest can grant: they govern the host functions only.
ALL_NETWORK = {"network": {"http": True, "websocket": True, "tcp": True}}


async def test_no_files_env_or_sockets(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """No host file system (not even the daemon's database), no environment, no sockets
    except through the host functions."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    async with scenario(tmp_path, make_module_dir, figures, "sandbox: fs/env/net") as (d, row):
        for path in ("/etc/passwd", str(secret), str(tmp_path / "vessel.db"), "/proc/self/environ",
                     "../../vessel.db", "/"):  # fmt: skip
            got = await call(d, HOSTILE, "read_file", {"path": path})
            assert got["ok"] is False, (path, got)
            row.bad_inputs += 1
        env = await call(d, HOSTILE, "env")
        assert not any(k in env for k in ("PATH", "HOME", "VESSEL_DATA_DIR")), env
        got = await call(d, HOSTILE, "socket", {"host": "127.0.0.1", "port": 1})
        assert got["ok"] is False, got
        row.bad_inputs += 2


async def test_no_other_modules_storage_or_identity(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """Storage keys name only the caller's own namespace, whatever they look like; an
    event emitted with a forged module id is stamped with the emitter's id."""
    async with scenario(tmp_path, make_module_dir, figures, "sandbox: storage/identity") as (
        d,
        row,
    ):
        await call(d, "healthy-a", "storage_set", {"key": "token", "value": "s3cret"})
        for key in ("token", "healthy-a/token", "healthy-a.token", "../healthy-a/token",
                    "healthy-a\x00token", "%"):  # fmt: skip
            got = await call(d, HOSTILE, "storage_get", {"key": key})
            assert got == {"value": None}, (key, got)
            row.bad_inputs += 1
        await call(d, HOSTILE, "storage_set", {"key": "token", "value": "overwritten"})
        assert d.storage.get("healthy-a", "token") == "s3cret"
        with d.bus.subscribe("*.forged", name="t") as sub:
            for forged in ("healthy-a", "vessel", ""):
                await call(d, HOSTILE, "emit", {"module": forged, "name": "forged", "data": 1})
                event = await next_event(sub, lambda e: e.name == "forged")
                assert event.module == HOSTILE, event
                row.bad_inputs += 1


async def _no_connection(listener: trio.socket.SocketType, seconds: float) -> bool:
    """True when nobody connected to ``listener`` (checked for ``seconds``, bounded)."""
    with trio.move_on_after(seconds):
        conn, _ = await listener.accept()
        conn.close()
        return False
    return True


async def test_wasi_sockets_are_denied_to_a_hand_written_component(
    tmp_path: Path, make_module_dir: MakeModuleDir, figures: Figures
) -> None:
    """A component written by hand in WAT (tests/guests/wat/netprobe.wat) that imports
    wasi:sockets itself, installed and run the way Vessel runs any module (install,
    module process, on-command), tries to connect to a port the test listens on, to bind
    a port, to open a UDP socket and to resolve a name: it links (wasi:sockets is part of
    the WASI every guest gets), and every step is refused by the store with a WASI error
    code, with or without every network permission in its manifest. The listener never
    sees a connection."""
    healthy_modules(make_module_dir, tmp_path)
    row = figures.row("sandbox: wasi:sockets (WAT)")
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probes = {"netprobe": {}, "netprobe-granted": ALL_NETWORK}
        async with running_daemon(tmp_path, policy=POLICY) as d:
            # Installed first, not under watch: each adds a module process, whose files
            # the daemon holds for as long as it runs.
            for module_id, perms in probes.items():
                await d.manager.install(
                    netprobe_manifest(module_id, permissions=perms), netprobe_wasm()
                )

                def running(m: str = module_id) -> bool:
                    return d.manager.state(m) is ModuleState.RUNNING

                await wait_until(running)
            with memory_limited(row, d):
                async with watch_healthy(d, row):
                    for module_id in probes:
                        for _ in range(3):
                            got = await call(d, module_id, "connect", {"port": port})
                            assert got == SOCKETS_DENIED, (module_id, got)
                            row.bad_inputs += 5
                        assert d.manager.state(module_id) is ModuleState.RUNNING
                assert await _no_connection(listener, 0.3), "a guest reached the test's listener"


def test_netprobe_reports_what_a_store_allows() -> None:
    """Control for the test above: the probe is not a dud that always reports a denial.
    In a store whose WASI allows name lookup (which Vessel never configures), the same
    component resolves "localhost"; sockets stay denied there too."""
    engine = wasmtime.Engine()  # no epoch deadline to arm: the probe does not loop
    component = wc.Component(engine, netprobe_wasm())
    _engine.check_world(engine, component, module_id="netprobe")
    linker = wc.Linker(engine)
    linker.add_wasip2()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasmtime_ffi.wasi_config_allow_ip_name_lookup(wasi.ptr(), True)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, component)
    guest = instance.get_export_index(store, _engine.GUEST_INTERFACE)
    index = instance.get_export_index(store, "on-command", guest)
    assert index is not None
    func = instance.get_func(store, index)
    assert func is not None
    result = func(store, "connect", json.dumps({"port": 9}))
    func.post_return(store)
    assert result.tag == "ok", result.payload
    assert json.loads(result.payload) == {**SOCKETS_DENIED, "lookup": "ok"}
