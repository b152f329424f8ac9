"""Payload build (compact, sorted) and strict parse (SPEC §1.1, §1.2)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig import payload
from atomicsig.errors import ReferenceError_, SignatureFormatError

DIG = "sha256:" + "20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"
GOOD = (f'{{"critical":{{"identity":{{"docker-reference":"quay.io/a:1"}},"image":{{"docker-manifest-digest":"{DIG}"}},'
        '"type":"atomic container signature"},"optional":{"creator":"x","timestamp":1}}')


def test_build_exact_bytes() -> None:
    out = payload.build("registry.example.com/ns/app:1.0", DIG, creator="atomic 5.37.0-dev", timestamp=1735689600)
    assert out == (
        b'{"critical":{"identity":{"docker-reference":"registry.example.com/ns/app:1.0"},'
        b'"image":{"docker-manifest-digest":"' + DIG.encode() + b'"},"type":"atomic container signature"},'
        b'"optional":{"creator":"atomic 5.37.0-dev","timestamp":1735689600}}')
    assert b" " not in out.replace(b"atomic container signature", b"").replace(b"atomic 5", b"")
    assert not out.endswith(b"\n")


def test_build_refuses_empty_and_bad_digest() -> None:
    with pytest.raises(SignatureFormatError):
        payload.build("", DIG)
    with pytest.raises(SignatureFormatError):
        payload.build("quay.io/a:1", "")
    with pytest.raises(ReferenceError_):
        payload.build("quay.io/a:1", "sha256:abc")


def test_parse_good_and_upstream_fixture_text() -> None:
    p = payload.parse(GOOD.encode())
    assert (p.docker_reference, p.manifest_digest, p.creator, p.timestamp) == ("quay.io/a:1", DIG, "x", 1)
    # The payload of c/image fixture dir-img-valid/signature-1 (quoted in SPEC §1.1), with a trailing newline.
    fixture = ('{"critical":{"identity":{"docker-reference":"testing/manifest:latest"},"image":'
               f'{{"docker-manifest-digest":"{DIG}"}},"type":"atomic container signature"}},'
               '"optional":{"creator":"atomic 0.1.13-dev","timestamp":1464398954}}\n')
    assert payload.parse(fixture.encode()).timestamp == 1464398954


def _mutate(fn) -> bytes:  # type: ignore[no-untyped-def]
    obj = json.loads(GOOD)
    fn(obj)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("data", "reason"), [
    (_mutate(lambda o: o["critical"].__setitem__("extra", 1)), "unknown key 'extra'"),
    (_mutate(lambda o: o.__setitem__("extra", 1)), "unknown key 'extra'"),
    (_mutate(lambda o: o["critical"]["image"].__setitem__("x", "y")), "unknown key"),
    (_mutate(lambda o: o["critical"]["identity"].__setitem__("x", "y")), "unknown key"),
    (_mutate(lambda o: o.pop("optional")), "'optional' missing"),
    (_mutate(lambda o: o["critical"].pop("identity")), "'identity' missing"),
    (_mutate(lambda o: o.__setitem__("optional", [])), "optional is not a JSON object"),
    (_mutate(lambda o: o["critical"].__setitem__("type", "other")), "unrecognized signature type"),
    (_mutate(lambda o: o["critical"].__setitem__("type", 5)), "not a string"),
    (_mutate(lambda o: o["critical"]["identity"].__setitem__("docker-reference", 5)), "not a string"),
    (_mutate(lambda o: o["critical"]["image"].__setitem__("docker-manifest-digest", "sha256:AB")), "digest"),
    (_mutate(lambda o: o["critical"]["image"].__setitem__("docker-manifest-digest", None)), "digest"),
    (_mutate(lambda o: o["optional"].__setitem__("timestamp", 1.5)), "not an integer"),
    (_mutate(lambda o: o["optional"].__setitem__("timestamp", "1")), "not a number"),
    (_mutate(lambda o: o["optional"].__setitem__("timestamp", True)), "not a number"),
    (_mutate(lambda o: o["optional"].__setitem__("creator", 1)), "not a string"),
    (_mutate(lambda o: o["optional"].__setitem__("timestamp", 1e300)), "out of range"),
    (GOOD.replace('"creator":"x"', '"creator":"x","creator":"y"').encode(), "duplicate key"),
    (GOOD.replace('{"critical":', '{"optional":{},"critical":').encode(), "duplicate key"),
    (GOOD.replace('"timestamp":1', '"timestamp":NaN').encode(), "NaN"),
    (GOOD.replace('"timestamp":1', '"timestamp":Infinity').encode(), "Infinity"),
    ((GOOD + "{}").encode(), "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b"\xff\xfe", "UTF-8"),
    (b"", "not valid JSON"),
])
def test_parse_strict_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(SignatureFormatError, match=reason):
        payload.parse(data)


def test_parse_lenient_where_cimage_is() -> None:
    # optional may be empty, may carry unknown members, 1e9 is an integral number.
    assert payload.parse(_mutate(lambda o: o.__setitem__("optional", {}))).timestamp is None
    p = payload.parse(_mutate(lambda o: o["optional"].update({"future": [1], "timestamp": 1e9})))
    assert p.timestamp == 1_000_000_000
    assert payload.parse(_mutate(lambda o: o["critical"]["image"].__setitem__(
        "docker-manifest-digest", "sha512:" + "c" * 128))).manifest_digest.startswith("sha512:")
    # docker-reference content is only checked at policy time.
    assert payload.parse(_mutate(lambda o: o["critical"]["identity"].__setitem__(
        "docker-reference", "NOT A REF"))).docker_reference == "NOT A REF"


_refs = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@given(_refs, st.text("0123456789abcdef", min_size=64, max_size=64), st.text(max_size=20),
       st.integers(min_value=0, max_value=2**62))
def test_roundtrip_property(ref: str, hexd: str, creator: str, ts: int) -> None:
    data = payload.build(ref, "sha256:" + hexd, creator=creator, timestamp=ts)
    obj = json.loads(data)
    # compact and sorted at every level
    assert data == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    p = payload.parse(data)
    assert (p.docker_reference, p.manifest_digest, p.creator, p.timestamp) == (ref, "sha256:" + hexd, creator, ts)
