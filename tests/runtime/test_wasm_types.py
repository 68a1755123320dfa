"""Function types fetched from wasmtime once (vessel/host/_wasm_types.py), read off a real
component: the fixed types give the same answers as wasmtime's, from Python alone.

That calls through them convert values as before is what the rest of the suite checks:
every host import and guest export is exercised through a real component."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmtime import component as wc

from vessel.host._engine import GUEST_INTERFACE, HOST_INTERFACE, make_engine
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
