"""atomicsig.format.jsonstrict: duplicate keys refused, and where a key or value stands (for file:line:col).

duplicate_key_offset and value_offsets are two uses of one positional walk; these pin what each reports, on valid
JSON and on text that is not JSON (no position, never an exception).
"""

from __future__ import annotations

import json

import pytest

from atomicsig.format.jsonstrict import (
    DuplicateKeyError,
    duplicate_key_offset,
    line_col,
    no_duplicate_keys,
    value_offsets,
)


def test_no_duplicate_keys_hook() -> None:
    assert json.loads('{"a": {"b": 1, "c": 2}}', object_pairs_hook=no_duplicate_keys) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(DuplicateKeyError, match="duplicate key 'b'"):
        json.loads('{"a": {"b": 1, "b": 2}}', object_pairs_hook=no_duplicate_keys)


@pytest.mark.parametrize(("text", "key"), [
    ('{"a": 1, "a": 2}', '"a": 2'),
    ('{"x": [{"k": 1}, {"k": 1, "j": {"q": 0, "q": 1}}]}', '"q": 1'),
    ('{"a": {"b": 1}, "b": {"b": 1, "b": 2}}', '"b": 2'),  # same key in different objects is no duplicate
    ('[\n {"s": "{\\"s\\": 1}", "s": 0}]', '"s": 0'),  # a key inside a string is not a key
])
def test_duplicate_key_offset_names_the_repeat_and_the_first(text: str, key: str) -> None:
    at = duplicate_key_offset(text)
    assert at is not None
    offset, first = at
    assert text[offset:].startswith(key)
    name = key.split(":")[0]
    assert text[first:].startswith(name) and first < offset


@pytest.mark.parametrize("text", ['{"a": 1, "b": [1, 2, {"c": {}}]}', "[]", "{}", '"s"', "  7 "])
def test_no_duplicate_gives_none(text: str) -> None:
    assert duplicate_key_offset(text) is None


@pytest.mark.parametrize("text", ['{"a": 1, "b"', "[1, 2", "", '{"a" 1}', "{" * 100000])
def test_not_json_gives_no_position(text: str) -> None:
    assert duplicate_key_offset(text) is None
    assert value_offsets(text) == {}


def test_value_offsets_paths_keys_and_values() -> None:
    text = '{\n  "default": [{"type": "reject"}],\n  "transports": {"docker": {}}\n}'
    got = value_offsets(text)
    assert set(got) == {(), ("default",), ("default", 0), ("default", 0, "type"), ("transports",),
                        ("transports", "docker")}
    assert got[()] == (0, 0)
    key, val = got[("default", 0, "type")]
    assert text[key:].startswith('"type"') and text[val:].startswith('"reject"')
    key, val = got[("default", 0)]
    assert key == val and text[val:].startswith('{"type"')  # an array element has no key: its own offset
    assert line_col(text, got[("transports", "docker")][0]) == (3, 18)
