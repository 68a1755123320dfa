"""The cold-start and memory floor: a bare child that does only what any wasmtime host
must. Run as a script (``python bench/_bare_child.py <module_dir> [<action> <params>]``) so
it imports nothing but wasmtime: Python starts, ``import wasmtime``, the precompiled
component is loaded (``Component.deserialize_file``, engine settings as Vessel's) and
instantiated with WASI linked and every other import a trap. It prints ``ready`` and holds
the instance until its stdin closes, so its memory can be read.

Without ``<action> <params>`` (the cold-start floors) the traps come from
``define_unknown_imports_as_traps``, which also takes WASI imports newer than wasmtime's
own for unknown (componentize-py guests import ``wasi:*@0.2.9``): instantiating does not
call them, but the guest could not run.

With ``<action> <params>`` (the memory floor) it first does what the module process it is
compared with has done: ``on-load``, then one ``on-command(action, params)``. A guest that
has run has touched its code and its memory image (both mapped from the ``.cwasm``: about
11 MiB for bench-echo) where an instance that never ran has touched almost none of it; a
floor that never ran would leave those pages out of one side only. Only the host interface
is linked as traps then (functions that raise), so WASI is really there.
"""

import json
import sys
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

GUEST_INTERFACE = "vessel:host/guest@1.0.0"
HOST_INTERFACE = "vessel:host/host@1.0.0"


def _trap(*_args: Any) -> Any:
    raise RuntimeError("host functions are not linked in the bare child")


def _link_host_as_traps(
    linker: wc.Linker, engine: wasmtime.Engine, component: wc.Component
) -> None:
    """Every function the component imports from the host interface, as a trap."""
    imports = component.type.imports(engine)
    if HOST_INTERFACE not in imports:
        return
    host = imports[HOST_INTERFACE].ty
    if not isinstance(host, wc.ComponentInstanceType):
        return
    with linker.root() as root, root.add_instance(HOST_INTERFACE) as inst:
        for name, item in host.exports(engine).items():
            if isinstance(item.ty, wc.FuncType):
                inst.add_func(name, _trap)


def main() -> None:
    module_dir = Path(sys.argv[1])
    call = sys.argv[2:4]
    record = json.loads(next((module_dir / "compiled").glob("*.json")).read_bytes())
    artifact = module_dir / "compiled" / f"{record['key']}.cwasm"
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    component = wc.Component.deserialize_file(engine, str(artifact))
    linker = wc.Linker(engine)
    linker.add_wasip2()
    if call:
        _link_host_as_traps(linker, engine, component)
    else:
        linker.define_unknown_imports_as_traps(component)
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    store.set_epoch_deadline(1 << 30)
    instance = linker.instantiate(store, component)
    if call:
        guest = instance.get_export_index(store, GUEST_INTERFACE)
        for export, args in (("on-load", ()), ("on-command", tuple(call))):
            index = instance.get_export_index(store, export, guest)
            func = instance.get_func(store, index) if index is not None else None
            if func is None:
                raise SystemExit(f"the component does not export {export}")
            result = func(store, *args)
            func.post_return(store)
            # on-load answers None, on-command an ok/err variant.
            if result is not None and getattr(result, "tag", None) != "ok":
                raise SystemExit(f"{export} answered {result!r}")
    print("ready", flush=True)
    sys.stdin.read()
    del instance


if __name__ == "__main__":
    main()
