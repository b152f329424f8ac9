"""Payload build (compact, sorted) and strict parse (SPEC §1.1, §1.2)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import ReferenceError_, SignatureFormatError
from atomicsig.format import payload

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
    (b"\xff\xfe", "not valid JSON"),  # Go: "invalid character"; invalid UTF-8 is only replaced inside strings
    (GOOD.replace('"creator":"x"', '"creator":"x","x":1,"x":2').encode(), "duplicate key 'x' in optional"),
    (GOOD.replace('"docker-reference"', '"docker-reference":"a","docker-reference"').encode(),
     "duplicate key 'docker-reference' in critical.identity"),
    (GOOD.replace('"type"', '"type":"t","type"').encode(), "duplicate key 'type' in critical"),
    # Go decodes every number (even in a member nobody reads) as float64 and fails on overflow.
    (GOOD.replace('"creator":"x"', '"creator":"x","future":[1e400]').encode(), "out of range"),
    (GOOD.replace('"creator":"x"', '"creator":"x","future":' + "9" * 400).encode(), "out of range"),
    (GOOD.replace('"timestamp":1', '"timestamp":9223372036854775807').encode(), "out of range"),
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


def test_duplicates_inside_optional_values_are_cimages_business() -> None:
    """c/image walks optional key by key (duplicates refused) but decodes each value with plain Go json, which keeps
    the last of two equal keys: skopeo 1.9.3 accepts these (issue 12 #10; tests/test_payload.py skopeo test)."""
    nested = GOOD.replace('"creator":"x"', '"creator":"x","future":{"a":1,"a":2}')
    deep = GOOD.replace('"creator":"x"', '"creator":"x","future":[{"b":{"c":1,"c":1}}]')
    assert payload.parse(nested.encode()).creator == "x"
    assert payload.parse(deep.encode()).timestamp == 1


def test_invalid_utf8_and_lone_surrogates_in_strings_are_replaced_like_go() -> None:
    p = payload.parse(GOOD.replace('"creator":"x"', '"creator":"a\\ud800b"').encode())
    assert p.creator == "a\ufffdb"
    p = payload.parse(GOOD.encode().replace(b'"creator":"x"', b'"creator":"\xff\xfe"'))
    assert p.creator == "\ufffd\ufffd"
    assert payload.parse(GOOD.replace('"timestamp":1', '"timestamp":9223372036854774784').encode()).timestamp \
        == 9223372036854774784


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


# ---- agreement with the real skopeo on this machine ---------------------------------------------------------


@pytest.mark.slow
def test_payload_decisions_agree_with_skopeo(signer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each edge payload signed with a real key: ``skopeo standalone-verify`` and :func:`payload.parse` agree."""
    import shutil
    import subprocess

    from atomicsig.format import manifest
    from atomicsig.gnupg.keyring import Keyring
    from tests.infra import skopeo

    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": "sha256:" + "2" * 64, "size": 2}, "layers": []}))
    digest = manifest.digest(man.read_bytes())
    good = GOOD.replace("quay.io/a:1", "registry.example.com/ns/app:1").replace(DIG, digest)
    opt = '"creator":"x"'
    cases: dict[str, bytes] = {
        "plain": good.encode(),
        "dup-in-optional": good.replace(opt, opt + ',"a":1,"a":2').encode(),
        "dup-creator": good.replace(opt, opt + ',"creator":"y"').encode(),
        "dup-nested-in-optional": good.replace(opt, opt + ',"x":{"a":1,"a":2}').encode(),
        "dup-deep-in-optional": good.replace(opt, opt + ',"x":[{"b":{"c":1,"c":1}}]').encode(),
        "dup-in-identity": good.replace('"docker-reference"', '"docker-reference":"z","docker-reference"').encode(),
        "invalid-utf8-creator": good.encode().replace(b'"creator":"x"', b'"creator":"\xff\xfe"'),
        "lone-surrogate": good.replace(opt, '"creator":"\\ud800"').encode(),
        "overflow-in-unknown": good.replace(opt, opt + ',"x":[1e400]').encode(),
        "timestamp-2^63-1": good.replace('"timestamp":1', '"timestamp":9223372036854775807').encode(),
        "timestamp-below-2^63": good.replace('"timestamp":1', '"timestamp":9223372036854774784').encode(),
        "timestamp-1e9": good.replace('"timestamp":1', '"timestamp":1e9').encode(),
        "creator-null": good.replace(opt, '"creator":null').encode(),
        "bom": "\ufeff".encode() + good.encode(),
    }
    kr = Keyring(str(signer.path))
    disagreements = []
    for name, data in cases.items():
        blob = tmp_path / name
        blob.write_bytes(kr.sign(data, signer.fingerprint, None))
        res = skopeo("standalone-verify", str(man), "registry.example.com/ns/app:1", signer.fingerprint, str(blob),
                     env={"GNUPGHOME": str(signer.path)}, check=False)
        try:
            payload.parse(data)
            ours = True
        except SignatureFormatError:
            ours = False
        if ours != (res.returncode == 0):
            disagreements.append(f"{name}: skopeo {res.returncode == 0} ({res.stderr.strip()[-80:]}), "
                                 f"atomicsig {ours}")
    assert not disagreements, subprocess.list2cmdline(disagreements)
