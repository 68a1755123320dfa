"""Component function types fetched from wasmtime once, for exports and host imports.

wasmtime-py asks the C API for a function's type on every call: for an export in
``Func.__call__``, for a host import in the trampoline its ``Linker`` registers, which
also wraps every parameter type anew. Converting a value then asks again, per value, for
a record's fields, a list's element type and a result/option/variant's cases. For a
command that is most of the Python time of a call; for a host import such as ``emit``
(one ``event`` record) it was about a third of the module process's CPU per event
(docs/performance.md, "Where the fan-out time goes"). A function's type never changes
for the life of its linker or instance, so here the first answers are kept.

This leans on wasmtime-py internals (the C callback type, ``catch_exceptions``, the type
classes' properties); wasmtime is pinned to one major version (pyproject.toml) for it,
and every host function is exercised through a real component by the test suite.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as wc
from wasmtime.component._enter import catch_exceptions


class _FixedRecordType(wc.RecordType):
    """A record type whose fields were fetched once."""

    _fixed_fields: list[tuple[str, wc.ValType]]

    @property
    def fields(self) -> list[tuple[str, wc.ValType]]:
        return self._fixed_fields


class _FixedListType(wc.ListType):
    """A list type whose element type was fetched once."""

    _fixed_element: wc.ValType

    @property
    def element(self) -> wc.ValType:
        return self._fixed_element


class _FixedTupleType(wc.TupleType):
    """A tuple type whose element types were fetched once."""

    _fixed_elements: list[wc.ValType]

    @property
    def elements(self) -> list[wc.ValType]:
        return self._fixed_elements


def fix(ty: wc.ValType) -> wc.ValType:
    """Make ``ty`` (and the types inside it) answer from what it is asked the first time.

    The type objects are changed in place (their class, or an instance attribute that
    hides a method), so a value converted with them needs no C call for its type.
    """
    if isinstance(ty, wc.RecordType) and not isinstance(ty, _FixedRecordType):
        fields = [(name, fix(field)) for name, field in ty.fields]
        ty.__class__ = _FixedRecordType
        ty._fixed_fields = fields  # type: ignore[attr-defined]
    elif isinstance(ty, wc.ListType) and not isinstance(ty, _FixedListType):
        element = fix(ty.element)
        ty.__class__ = _FixedListType
        ty._fixed_element = element  # type: ignore[attr-defined]
    elif isinstance(ty, wc.TupleType) and not isinstance(ty, _FixedTupleType):
        elements = [fix(element) for element in ty.elements]
        ty.__class__ = _FixedTupleType
        ty._fixed_elements = elements  # type: ignore[attr-defined]
    elif isinstance(ty, wc.ResultType | wc.OptionType | wc.VariantType):
        cases = [(name, None if case is None else fix(case)) for name, case in ty._cases()]
        tagged = ty._tagged()
        ty._cases = lambda: cases  # type: ignore[method-assign]
        ty._tagged = lambda: tagged  # type: ignore[method-assign]
    return ty


class FixedFuncType:
    """A function's parameter and result types, fetched from wasmtime once."""

    __slots__ = ("_source", "params", "result")

    def __init__(self, source: wc.FuncType) -> None:
        self._source = source  # keeps the C object the types were read from alive
        self.params = [(name, fix(ty)) for name, ty in source.params]
        self.result = None if source.result is None else fix(source.result)


def fix_export(func: wc.Func, store: wasmtime.Store) -> None:
    """Make the export ``func`` reuse its type instead of fetching it on every call
    (``Func.__call__`` asks ``func.type(store)`` each time), and free its result."""
    fixed = FixedFuncType(func.type(store))
    if fixed.result is not None:
        _free_after_converting(fixed.result)
    func.type = lambda store: fixed  # type: ignore[method-assign,assignment,return-value]


def _free_after_converting(ty: wc.ValType) -> None:
    """Make converting a call's result free what wasmtime allocated for it.

    ``Func.__call__`` converts its result value and never deletes it. Converting
    consumes the strings and lists inside (each is emptied as it is read), but the box
    that holds a ``result``/``option``/``variant`` payload is only freed with the value
    that points at it: every call of an export returning ``result<...>`` (all of ours
    do) leaked that box, 48 bytes of C heap in the module process per invocation
    (8 MiB a day for a module invoked twice a second; found by the soak,
    docs/performance.md). Deleting the value once converted frees it; what the
    conversion emptied is not freed twice. Only the top-level result is wrapped: the
    payloads inside are freed with it. A trapped call never converts, so a result
    wasmtime did not write is never deleted.
    """
    convert = ty.convert_from_c

    def convert_and_free(c: Any) -> Any:
        try:
            return convert(c)
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(c))

    ty.convert_from_c = convert_and_free  # type: ignore[method-assign]


# -- host imports ------------------------------------------------------------------------

HostFunc = Callable[..., Any]


class _Import:
    __slots__ = ("func", "types")

    def __init__(self, func: HostFunc) -> None:
        self.func = func
        self.types: FixedFuncType | None = None


#: The host functions linked so far, by the index wasmtime hands back to the trampoline.
_IMPORTS: Final[dict[int, _Import]] = {}
_next_index = itertools.count(1)


def add_import(instance: wc.LinkerInstance, name: str, func: HostFunc) -> None:
    """Link ``func(store, *args)`` as ``name`` in ``instance``, as
    ``LinkerInstance.add_func`` does, but with its type fetched on the first call only."""
    index = next(_next_index)
    _IMPORTS[index] = _Import(func)
    name_bytes = name.encode()
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(),
        ctypes.create_string_buffer(name_bytes),
        len(name_bytes),
        _trampoline,
        index,
        _finalize,
    )
    if error:
        del _IMPORTS[index]
        raise wasmtime.WasmtimeError._from_ptr(error)


def _call_host(
    index: int | None,
    context: Any,
    ty_raw: Any,
    args: Any,
    nargs: int,
    results: Any,
    nresults: int,
) -> Any:
    entry = _IMPORTS[index or 0]

    def run(store: wasmtime.StoreContext) -> None:
        types = entry.types
        if types is None:
            # The callback's type pointer is only lent for this call: keep a copy.
            owned = ffi.wasmtime_component_func_type_clone(ty_raw)
            types = entry.types = FixedFuncType(wc.FuncType._from_ptr(owned, owner=None))
        params = types.params
        if len(params) != nargs or (nresults != 0) != (types.result is not None):
            raise wasmtime.WasmtimeError(
                f"host function called with a different type (index {index})"
            )
        result = entry.func(
            store, *[ty.convert_from_c(args[i]) for i, (_, ty) in enumerate(params)]
        )
        if types.result is not None:
            types.result.convert_to_c(store, result, results)
        elif result is not None:
            raise wasmtime.WasmtimeError("a host function without a result returned a value")

    return catch_exceptions(context, run)


def _forget(index: int | None) -> None:
    _IMPORTS.pop(index or 0, None)


# ctypes keeps these C function pointers alive as long as the module is loaded.
_trampoline: Final = ffi.wasmtime_component_func_callback_t(_call_host)
_finalize: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_forget)
