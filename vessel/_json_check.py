"""A depth bound for every JSON text that comes from outside: WebSocket frames, REST
bodies, a module's call parameters and answers, its events, an uploaded manifest.

msgspec decodes recursively and gives up with ``RecursionError`` near Python's recursion
limit (~1,000 levels, fewer the deeper the caller already is): an error that escaped as
a traceback, closed a WebSocket before its login with code 1000, and made a REST call
answer 500. No message Vessel speaks nests deeper than a few levels, and no home-server
payload needs more than :data:`MAX_JSON_DEPTH`; so a text nested deeper is refused as
invalid input, with a message that says so, before it is decoded at all.

The check costs two ``count`` calls for the usual text (fewer opening brackets than the
bound cannot nest deeper than it); only a text with more brackets is scanned: strings
removed (they may hold brackets), then the nesting followed over what is left, by
regular expressions and ``itertools`` rather than a Python loop per character. It is
not a parser: a text that passes is still decoded (and refused) by msgspec.
"""

from __future__ import annotations

import re
from itertools import accumulate

import msgspec

#: The deepest nesting of arrays and objects accepted in a JSON text from outside.
MAX_JSON_DEPTH = 64

# A JSON string (the "unrolled loop" form: linear, no backtracking), and the brackets.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRING_B = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_BRACKET_B = re.compile(rb"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_STEP_B = {b"[": 1, b"{": 1, b"]": -1, b"}": -1}


def depth_problem(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``text`` nests too deeply to be decoded, or None."""
    if isinstance(text, str):
        if text.count("[") + text.count("{") <= max_depth:
            return None
        steps = map(_STEP.__getitem__, _BRACKET.findall(_STRING.sub("", text)))
    else:
        if text.count(b"[") + text.count(b"{") <= max_depth:
            return None
        steps = map(_STEP_B.__getitem__, _BRACKET_B.findall(_STRING_B.sub(b"", text)))
    if max(accumulate(steps), default=0) <= max_depth:
        return None
    return f"JSON nested more than {max_depth} levels deep"


def json_problem(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``text`` is not one JSON value Vessel accepts (too deep, or not JSON), or None.
    Builds no Python objects."""
    if problem := depth_problem(text, max_depth):
        return problem
    try:
        msgspec.json.decode(text, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        return f"not valid JSON: {exc}"
    except RecursionError:  # pragma: no cover - the depth check refuses such text first
        return f"JSON nested more than {max_depth} levels deep"
    return None


__all__ = ["MAX_JSON_DEPTH", "depth_problem", "json_problem"]
