"""Function types fetched from wasmtime once (vessel/host/_wasm_types.py), read off a real
component: the fixed types give the same answers as wasmtime's, from Python alone, and
host imports linked through Vessel's trampoline convert values both ways.

The rest of the suite exercises every host import and guest export through a real
component in a real module process."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wasmtime import component as wc

from tests.fixture_types import MakeModuleDir
from vessel._manifest import load_module_dir
from vessel.host._engine import GUEST_INTERFACE, HOST_INTERFACE, make_engine
from vessel.host._runtime import GuestRuntime, GuestTrap, Limits
from vessel.host._wasm_types import FixedFuncType


def _functions(guest_artifact: Callable[[str], Any], interface: str) -> dict[str, wc.FuncType]:
    engine = make_engine()
    component = wc.Component.deserialize_file(engine, str(guest_artifact("testkit")))
    if interface == HOST_INTERFACE:
        side = component.type.imports(engine)
    else:
        side = component.type.exports(engine)
    instance = side[interface].ty
    assert isinstance(instance, wc.ComponentInstanceType)
    funcs = {}
    for name, item in instance.exports(engine).items():
        func_type = item.ty
        if isinstance(func_type, wc.FuncType):  # (the interface's records are items too)
            funcs[name] = func_type
    return funcs


def _shape(ty: wc.ValType | None) -> Any:
    """A type as plain data, asked of wasmtime (or of the fixed answers) all the way down."""
    if isinstance(ty, wc.RecordType):
        return ("record", [(name, _shape(field)) for name, field in ty.fields])
    if isinstance(ty, wc.ListType):
        return ("list", _shape(ty.element))
    if isinstance(ty, wc.TupleType):
        return ("tuple", [_shape(element) for element in ty.elements])
    if isinstance(ty, wc.ResultType | wc.OptionType | wc.VariantType):
        return (type(ty).__name__, ty._tagged(), [(n, _shape(c)) for n, c in ty._cases()])
    return None if ty is None else type(ty).__name__


def test_fixed_types_answer_as_wasmtime_does(guest_artifact: Callable[[str], Any]) -> None:
    """Every host import and guest export of the vessel-module world: parameters and
    result, records, lists and results included."""
    checked = 0
    for interface in (HOST_INTERFACE, GUEST_INTERFACE):
        for name, func_type in _functions(guest_artifact, interface).items():
            fixed = FixedFuncType(func_type)
            fresh = _functions(guest_artifact, interface)[name]
            expected = ([(n, _shape(t)) for n, t in fresh.params], _shape(fresh.result))
            assert ([(n, _shape(t)) for n, t in fixed.params], _shape(fixed.result)) == expected
            checked += 1
    assert checked >= 20


def test_fixed_types_ask_wasmtime_nothing_more(guest_artifact: Callable[[str], Any]) -> None:
    """Once fixed, a record's fields, a list's element and a result's cases come from
    Python: the answers are the very objects given the first time."""
    emit = FixedFuncType(_functions(guest_artifact, HOST_INTERFACE)["emit"])
    (_, event), result = emit.params[0], emit.result
    assert isinstance(event, wc.RecordType)
    assert event.fields is event.fields
    assert [name for name, _ in event.fields] == ["module", "name", "version", "data", "timestamp"]
    assert isinstance(result, wc.ResultType)
    assert result._cases() is result._cases()
    fetch = FixedFuncType(_functions(guest_artifact, HOST_INTERFACE)["http-fetch"])
    request = fetch.params[0][1]
    assert isinstance(request, wc.RecordType)
    headers = dict(request.fields)["headers"]
    assert isinstance(headers, wc.ListType)
    assert headers.element is headers.element


def test_host_imports_convert_both_ways_through_the_trampoline(
    tmp_path: Path, make_module_dir: MakeModuleDir, guest_artifact: Callable[[str], Any]
) -> None:
    """The testkit guest in-process, with Python host functions linked through Vessel's
    trampoline: an ``event`` record reaches ``emit`` field by field, every call; ``ok``
    and ``err`` go back as the guest sees them (it counts the refused one); an
    ``option`` result (``storage-get``) and no result (``log``) work too."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="kit")
    emitted: list[tuple[str, str, int, Any, int]] = []
    logged: list[tuple[str, str]] = []

    def emit(event: Any) -> str | None:
        emitted.append((event.module, event.name, event.version, json.loads(event.data),
                        event.timestamp))  # fmt: skip
        return "refused: the second one" if len(emitted) == 2 else None

    imports = _unexpected_imports(guest_artifact)
    imports["emit"] = emit
    imports["storage-get"] = lambda key: None
    imports["log"] = lambda level, message: logged.append((level, message))
    runtime = _in_process(module_dir, imports)
    try:
        runtime.load()
        runtime.instantiate()
        runtime.call("on-load")
        assert logged == [("info", "testkit loaded")]
        params = {"name": "n", "count": 3, "numbered": True, "version": 7}
        answer = runtime.call("on-command", "emit", json.dumps(params))
    finally:
        runtime.close()
    assert (answer.tag, json.loads(answer.payload)) == ("ok", {"refused": 1})
    assert emitted == [("testkit", "n", 7, {"n": i}, 0) for i in range(3)]


def test_a_host_function_that_raises_traps_that_instance_only(
    tmp_path: Path,
    make_module_dir: MakeModuleDir,
    guest_artifact: Callable[[str], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Host functions return their errors as values. One that raises anyway (a bug in
    Vessel) traps the invocation as any trap does: a GuestTrap that names the function
    and the exception, the traceback in the log, the instance gone; a fresh one works."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="kit")
    logged: list[tuple[str, str]] = []
    failures = [KeyError("the host's own bug")]

    def storage_get(key: str) -> str | None:
        if failures:
            raise failures.pop()
        return None

    imports = _unexpected_imports(guest_artifact)
    imports["storage-get"] = storage_get
    imports["log"] = lambda level, message: logged.append((level, message))
    runtime = _in_process(module_dir, imports)
    try:
        runtime.load()
        runtime.instantiate()
        with pytest.raises(GuestTrap) as trap:
            runtime.call("on-load")
        assert trap.value.export == "on-load"
        assert "host function 'storage-get' failed: KeyError" in trap.value.reason
        assert "host's own bug" in caplog.text
        with pytest.raises(GuestTrap, match="no live instance"):
            runtime.call("on-command", "echo", "{}")
        runtime.instantiate()
        runtime.call("on-load")
        answer = runtime.call("on-command", "echo", json.dumps({"ok": 1}))
    finally:
        runtime.close()
    assert logged == [("info", "testkit loaded")]
    assert (answer.tag, json.loads(answer.payload)) == ("ok", {"ok": 1})


def _unexpected_imports(guest_artifact: Callable[[str], Any]) -> dict[str, Callable[..., Any]]:
    """Every host import of the world, failing the test if the guest calls it."""

    def unexpected(*args: Any) -> Any:
        raise AssertionError(f"host function called unexpectedly with {args}")

    return dict.fromkeys(_functions(guest_artifact, HOST_INTERFACE), unexpected)


def _in_process(module_dir: Path, imports: dict[str, Callable[..., Any]]) -> GuestRuntime:
    """The module's guest in this process, with ``imports`` as its host functions."""
    return GuestRuntime(
        module_id="kit",
        module_dir=module_dir,
        source_hash=load_module_dir(module_dir).hash,
        limits=Limits(memory_bytes=256 << 20, invocation_seconds=30.0),
        imports=imports,
        on_output=lambda _stream, _data: None,
    )


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def _c_heap_in_use() -> int:
    """Bytes malloc has handed out and not had back, over every arena (glibc's
    ``mallinfo2``): exact, whatever the scheduler does, unlike a process's RSS."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def test_calling_an_export_many_times_leaks_nothing(
    tmp_path: Path, make_module_dir: MakeModuleDir, guest_artifact: Callable[[str], Any]
) -> None:
    """Each call's result is freed: wasmtime-py never deleted an export's result value,
    so the box holding a ``result``'s payload leaked, 48 bytes of C heap per invocation
    (a module process grew ~2 MiB an hour in the soak). 20 000 echo calls, after a
    warm-up, must leave the C heap where it was (a leak of 48 bytes a call would be
    ~940 KiB; the bound allows 2 bytes a call of noise)."""
    module_dir = make_module_dir(tmp_path, "testkit", module_id="kit")
    imports = _unexpected_imports(guest_artifact)
    imports["storage-get"] = lambda key: None
    imports["log"] = lambda level, message: None
    runtime = _in_process(module_dir, imports)
    params = json.dumps({"entity_id": "light.kitchen", "brightness": 128})
    try:
        runtime.load()
        runtime.instantiate()
        runtime.call("on-load")
        for _ in range(2000):
            runtime.call("on-command", "echo", params)
        before = _c_heap_in_use()
        for _ in range(20_000):
            answer = runtime.call("on-command", "echo", params)
        grown = _c_heap_in_use() - before
        missing = runtime.call("on-command", "no-such-command", "{}")
    finally:
        runtime.close()
    assert (answer.tag, json.loads(answer.payload)) == ("ok", json.loads(params))
    assert missing.tag == "err"
    assert grown < 2 * 20_000, f"the C heap grew {grown} bytes over 20 000 calls"
