"""The cold-start and memory floor: a bare child that does only what any wasmtime host
must. Run as a script (``python bench/_bare_child.py <module_dir>``) so it imports nothing
but wasmtime: Python starts, ``import wasmtime``, the precompiled component is loaded
(``Component.deserialize_file``, engine settings as Vessel's) and instantiated with WASI
linked and every other import a trap. It prints ``ready`` and holds the instance until its
stdin closes, so its memory can be read.
"""

import json
import sys
from pathlib import Path

import wasmtime
from wasmtime import component as wc


def main() -> None:
    module_dir = Path(sys.argv[1])
    record = json.loads(next((module_dir / "compiled").glob("*.json")).read_bytes())
    artifact = module_dir / "compiled" / f"{record['key']}.cwasm"
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    component = wc.Component.deserialize_file(engine, str(artifact))
    linker = wc.Linker(engine)
    linker.add_wasip2()
    linker.define_unknown_imports_as_traps(component)
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    store.set_epoch_deadline(1 << 30)
    instance = linker.instantiate(store, component)
    print("ready", flush=True)
    sys.stdin.read()
    del instance


if __name__ == "__main__":
    main()
