"""The JSON depth bound (vessel/_json_check.py): exact at the bound, blind to brackets in
strings, the same for str and bytes."""

from __future__ import annotations

import json

import pytest

from vessel._json_check import MAX_JSON_DEPTH, depth_problem, json_problem


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("kind", [str, bytes])
def test_the_bound_is_exact(kind: type) -> None:
    def as_kind(text: str) -> str | bytes:
        return text if kind is str else text.encode()

    assert depth_problem(as_kind(nested(MAX_JSON_DEPTH))) is None
    problem = depth_problem(as_kind(nested(MAX_JSON_DEPTH + 1)))
    assert problem == f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    objects = '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    assert depth_problem(as_kind(objects)) is not None


def test_brackets_in_strings_do_not_count() -> None:
    """Many brackets, shallow nesting: strings full of them (escaped quotes too), and
    many siblings, pass; the same brackets outside strings do not."""
    tricky = json.dumps(["[" * 500, '\\"[[[[', {"k": "{" * 200}], separators=(",", ":"))
    assert json_problem(tricky) is None
    siblings = json.dumps([[[]] for _ in range(1000)])
    assert json_problem(siblings) is None
    assert json_problem('["\\"", ' + nested(MAX_JSON_DEPTH) + "]") is not None


def test_json_problem_names_what_is_wrong() -> None:
    assert json_problem('{"a": 1}') is None
    not_json = json_problem('{"a": }')
    assert not_json is not None
    assert not_json.startswith("not valid JSON")
    deep = json_problem(nested(1000))
    assert deep is not None
    assert "nested more than" in deep
