"""Manifest digests as containers/image computes them (SPEC §7.1), incl. a hand-built schema-1 JWS vector."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import InputError
from atomicsig.format import manifest


def _sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


V2S2 = json.dumps({"schemaVersion": 2, "mediaType": manifest.DOCKER_V2S2,
                   "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                              "digest": "sha256:" + "1" * 64}, "layers": []}, indent=3).encode()
OCI = json.dumps({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                                 "size": 1, "digest": "sha256:" + "2" * 64}, "layers": []}).encode()
INDEX = json.dumps({"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": [
    {"mediaType": manifest.OCI_MANIFEST, "digest": "sha256:" + "3" * 64, "size": 10,
     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"mediaType": manifest.OCI_MANIFEST, "digest": "sha256:" + "4" * 64, "size": 10}]}).encode()
DLIST = json.dumps({"schemaVersion": 2, "mediaType": manifest.DOCKER_LIST, "manifests": [
    {"mediaType": manifest.DOCKER_V2S2, "digest": "sha256:" + "5" * 64, "size": 10,
     "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()


def schema1_signed(n_sigs: int = 1, tail_override: bytes | None = None) -> tuple[bytes, bytes]:
    """A libtrust-style pretty JWS: returns (signed manifest, the payload whose sha256 is its digest)."""
    body = {"schemaVersion": 1, "name": "ns/app", "tag": "1", "architecture": "amd64",
            "fsLayers": [{"blobSum": "sha256:" + "6" * 64}], "history": [{"v1Compatibility": "{}"}]}
    unsigned = json.dumps(body, indent=3).encode()
    assert unsigned.endswith(b"\n}")
    format_length = len(unsigned) - 2
    tail = unsigned[format_length:]
    sigs = []
    for i in range(n_sigs):
        protected = {"formatLength": format_length, "formatTail": _b64url(tail_override if i else tail),
                     "time": "2016-01-01T00:00:00Z"}
        sigs.append({"header": {"jwk": {"kty": "EC"}, "alg": "ES256"}, "signature": _b64url(b"sig%d" % i),
                     "protected": _b64url(json.dumps(protected).encode())})
    sig_json = json.dumps(sigs, indent=3).replace("\n", "\n   ").encode()
    signed = unsigned[:format_length] + b',\n   "signatures": ' + sig_json + tail
    return signed, unsigned


def test_schema1_signed_digest_is_of_the_jws_payload() -> None:
    signed, unsigned = schema1_signed()
    json.loads(signed)  # the vector itself is valid JSON
    assert manifest.guess_media_type(signed) == manifest.DOCKER_V2S1_SIGNED
    assert manifest.digest(signed) == _sha(unsigned)
    assert manifest.digest(signed) != _sha(signed)
    # Two signatures that agree on the payload give the same digest.
    signed2, _ = schema1_signed(2, tail_override=b"\n}")
    assert manifest.digest(signed2) == _sha(unsigned)


def test_schema1_errors() -> None:
    bad, _ = schema1_signed(2, tail_override=b"\n }")
    with pytest.raises(InputError, match="disagree"):
        manifest.digest(bad)
    empty = json.dumps({"schemaVersion": 1, "signatures": []}).encode()
    with pytest.raises(InputError, match="empty signatures"):
        manifest.digest(empty)
    garbage = json.dumps({"schemaVersion": 1, "signatures": [{"protected": "!!"}]}).encode()
    with pytest.raises(InputError, match="protected header"):
        manifest.digest(garbage)


def test_schema1_unsigned_is_raw() -> None:
    data = json.dumps({"schemaVersion": 1, "name": "a"}).encode()
    assert manifest.guess_media_type(data) == manifest.DOCKER_V2S1
    assert manifest.digest(data) == _sha(data)


@pytest.mark.parametrize(("data", "mt"), [(V2S2, manifest.DOCKER_V2S2), (OCI, manifest.OCI_MANIFEST),
                                          (INDEX, manifest.OCI_INDEX), (DLIST, manifest.DOCKER_LIST)])
def test_other_types_hash_exact_bytes(data: bytes, mt: str) -> None:
    assert manifest.guess_media_type(data) == mt
    assert manifest.digest(data) == _sha(data)
    # whitespace matters: no canonicalization
    assert manifest.digest(data + b"\n") == _sha(data + b"\n") != manifest.digest(data)


def test_non_json_hashes_raw_and_size_limit() -> None:
    assert manifest.digest(b"\x00not json") == _sha(b"\x00not json")
    with pytest.raises(InputError, match="larger"):
        manifest.digest(b" " * (manifest.MAX_MANIFEST_SIZE + 1))


def test_list_instances() -> None:
    inst = manifest.list_instances(INDEX)
    assert [(i.digest[-4:], i.platform) for i in inst] == [("3333", "linux/arm64/v8"), ("4444", "")]
    assert manifest.list_instances(DLIST)[0].platform == "linux/amd64"
    assert manifest.list_instances(OCI) == []
    with pytest.raises(InputError):
        manifest.list_instances(json.dumps({"mediaType": manifest.OCI_INDEX, "manifests": [{}]}).encode())


@given(st.binary(max_size=2000))
def test_digest_of_arbitrary_non_schema1_bytes(data: bytes) -> None:
    try:
        signed = manifest.guess_media_type(data) == manifest.DOCKER_V2S1_SIGNED
    except InputError:
        signed = False
    if not signed:
        assert manifest.digest(data) == _sha(data)
