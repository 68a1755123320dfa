"""A first look at uploaded bytes, before a compile process is started for them.

Compiling happens in a process of its own (``vessel._compiler``), and starting one costs
~0.3 s of CPU before it has read a byte (an interpreter, wasmtime's import), at a low
priority. Most bytes that are no component at all (empty, text, a core module, a file
cut short in transit, junk) show it in their framing: the WebAssembly header and the
sizes of the top-level sections. This looks at just that, and refuses them at once with
the same kind of message wasmtime would give; everything it lets through is compiled
and checked for real. It reads no section's contents (no codec here: wasmtime is the
parser).
"""

from __future__ import annotations

import mmap

#: What is looked at: the bytes, or a file mapped in (an upload stays out of the heap).
Wasm = bytes | mmap.mmap

#: ``\0asm``, then the component encoding's version and layer (a core module has
#: version 1, layer 0).
COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"
CORE_MODULE_HEADER = b"\0asm\x01\x00\x00\x00"


def framing_problem(wasm: Wasm) -> str | None:
    """Why ``wasm`` cannot be a WebAssembly component, from its framing alone; None
    when its header and top-level section sizes are sound."""
    head = wasm[: len(COMPONENT_HEADER)]
    if head == CORE_MODULE_HEADER:
        return "it is a core WebAssembly module, not a component (build it as a component)"
    if head != COMPONENT_HEADER:
        return "it does not start with the WebAssembly component header"
    at = len(COMPONENT_HEADER)
    while at < len(wasm):
        at += 1  # the section id
        size, at = _leb128_u32(wasm, at)
        if size is None or at + size > len(wasm):
            return f"it ends inside a section at byte {at} (cut short?)"
        at += size
    return None


def _leb128_u32(data: Wasm, at: int) -> tuple[int | None, int]:
    """An unsigned LEB128 number of at most 5 bytes at ``data[at:]``, and where it ends
    (None: it runs past the end, or is longer than a u32 may be)."""
    value = shift = 0
    for i in range(at, min(at + 5, len(data))):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    return None, at
