"""Reference parsing/normalization as containers/image does it (SPEC §7.2, §5.4, §3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import ReferenceError_
from atomicsig.format import reference

HEX = "a" * 64
DIG = f"sha256:{HEX}"


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", "docker.io/library/busybox"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox"),
    ("docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/busybox", "docker.io/library/busybox"),
    ("index.docker.io/team/app:1", "docker.io/team/app:1"),
    ("team/app", "docker.io/team/app"),
    ("localhost/app", "localhost/app"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1"),
    ("quay.io/ns/app", "quay.io/ns/app"),
    ("registry.example.com:5000/a/b/c:1.0", "registry.example.com:5000/a/b/c:1.0"),
    (f"quay.io/ns/app@{DIG}", f"quay.io/ns/app@{DIG}"),
    (f"quay.io/ns/app:v1@{DIG}", f"quay.io/ns/app:v1@{DIG}"),
    ("Example.COM/app", "Example.COM/app"),  # the domain may be uppercase, the path may not
    ("a__b/c-d.e_f", "docker.io/a__b/c-d.e_f"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000/x"),
])
def test_normalize(text: str, expected: str) -> None:
    assert str(reference.parse(text)) == expected


def test_parts() -> None:
    r = reference.parse(f"registry.example.com:5000/ns1/ns2/app:1.0@{DIG}")
    assert (r.domain, r.path, r.tag, r.digest) == ("registry.example.com:5000", "ns1/ns2/app", "1.0", DIG)
    assert r.name == "registry.example.com:5000/ns1/ns2/app"
    assert r.identity() == "registry.example.com:5000/ns1/ns2/app:1.0"
    assert reference.parse(f"quay.io/a@{DIG}").identity() == f"quay.io/a@{DIG}"


def test_no_latest_defaulting_but_available() -> None:
    r = reference.parse("busybox")
    assert r.tag is None and r.name_only
    assert str(r.with_tag_default()) == "docker.io/library/busybox:latest"
    assert reference.parse("busybox:1").with_tag_default().tag == "1"


@pytest.mark.parametrize("text", [
    "", "Busybox", "quay.io/NS/app", "quay.io/ns/App:1", HEX, "docker://quay.io/a",
    "quay.io/a:", "quay.io/a@sha256:abc", f"quay.io/a@sha256:{'A' * 64}", f"quay.io/a@sha256:{HEX}0",
    "quay.io//a", "quay.io/a/", "-a/b", "a/b:-tag", "a b", "quay.io/a:" + "t" * 129,
    "x/" + "a" * 260,
])
def test_rejected(text: str) -> None:
    with pytest.raises(ReferenceError_):
        reference.parse(text)


def test_uppercase_message_and_hex_message() -> None:
    with pytest.raises(ReferenceError_, match="lowercase"):
        reference.parse("quay.io/Foo")
    with pytest.raises(ReferenceError_, match="image ID"):
        reference.parse(HEX)


def test_canonical() -> None:
    assert str(reference.parse("docker.io/library/busybox:1", canonical=True)) == "docker.io/library/busybox:1"
    with pytest.raises(ReferenceError_, match="not canonical"):
        reference.parse("busybox:1", canonical=True)


def test_validate_digest() -> None:
    assert reference.validate_digest(DIG) == DIG
    assert reference.validate_digest("sha512:" + "b" * 128)
    for bad in ("sha256:" + "a" * 63, "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha384:" + "a" * 64, ""):
        with pytest.raises(ReferenceError_):
            reference.validate_digest(bad)


def test_scopes_with_wildcards() -> None:
    r = reference.parse("yet.another.example.com:8443/ns/repo:1")
    assert r.scopes() == [
        "yet.another.example.com:8443/ns/repo:1",
        "yet.another.example.com:8443/ns/repo",
        "yet.another.example.com:8443/ns",
        "yet.another.example.com:8443",
        "*.another.example.com", "*.example.com", "*.com",
    ]
    assert reference.parse("busybox").scopes() == [
        "docker.io/library/busybox", "docker.io/library", "docker.io", "*.io"]
    assert reference.parse("localhost:5000/a/b:t").scopes() == [
        "localhost:5000/a/b:t", "localhost:5000/a/b", "localhost:5000/a", "localhost:5000"]
    # Tag wins over digest in the policy identity (c/image PolicyConfigurationIdentity).
    assert reference.parse(f"quay.io/a:t@{DIG}").policy_identity() == "quay.io/a:t"
    assert reference.parse(f"quay.io/a@{DIG}").policy_identity() == f"quay.io/a@{DIG}"


def test_parse_repository() -> None:
    assert reference.parse_repository("quay.io/a").name == "quay.io/a"
    with pytest.raises(ReferenceError_):
        reference.parse_repository("quay.io/a:1")


_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,6})?", fullmatch=True)
_host = st.sampled_from(["quay.io", "registry.example.com:5000", "localhost:5000", "localhost", "docker.io"])
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(_host, st.lists(_component, min_size=1, max_size=4), st.one_of(st.none(), _tag),
       st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64)))
def test_roundtrip_property(host: str, comps: list[str], tag: str | None, hexd: str | None) -> None:
    text = host + "/" + "/".join(comps)
    if tag is not None:
        text += ":" + tag
    if hexd is not None:
        text += "@sha256:" + hexd
    r = reference.parse(text)
    # Fully expanded references are fixed points, and parse∘str is the identity after normalization.
    assert reference.parse(str(r)) == r
    assert reference.parse(str(r), canonical=True) == r
    assert r.tag == tag and (r.digest is None) == (hexd is None)
    assert "/" in r.path or r.domain != "docker.io"
    ns = r.policy_namespaces()
    assert ns[0] == r.name and all(r.name.startswith(n) for n in ns if not n.startswith("*."))


# ---- signedIdentity matchers (SPEC §2.4) --------------------------------------------------------------------

from atomicsig.errors import PolicyError  # noqa: E402
from atomicsig.format import identity  # noqa: E402

D2 = "sha256:" + "b" * 64


def _i(text: str) -> reference.Reference:
    r = reference.parse(text)
    return r.with_tag_default() if r.name_only else r


@pytest.mark.parametrize(("matcher", "intended", "signed", "ok"), [
    # matchRepoDigestOrExact (default)
    (identity.MatchRepoDigestOrExact(), "quay.io/a:1", "quay.io/a:1", True),
    (identity.MatchRepoDigestOrExact(), "busybox", "docker.io/library/busybox:latest", True),
    (identity.MatchRepoDigestOrExact(), "busybox", "busybox:latest", True),
    (identity.MatchRepoDigestOrExact(), "quay.io/a:1", "quay.io/a:2", False),
    (identity.MatchRepoDigestOrExact(), "quay.io/a:1", "quay.io/b:1", False),
    (identity.MatchRepoDigestOrExact(), "quay.io/a:1", "quay.io/a", False),
    (identity.MatchRepoDigestOrExact(), f"quay.io/a@{DIG}", "quay.io/a:anytag", True),  # pull by digest
    (identity.MatchRepoDigestOrExact(), f"quay.io/a@{DIG}", f"quay.io/a@{D2}", True),
    (identity.MatchRepoDigestOrExact(), f"quay.io/a@{DIG}", "quay.io/b:1", False),
    (identity.MatchRepoDigestOrExact(), f"quay.io/a@{DIG}", "quay.io/a", False),
    (identity.MatchRepoDigestOrExact(), f"quay.io/a:1@{DIG}", "quay.io/a:1", False),  # tag+digest: exact
    (identity.MatchRepoDigestOrExact(), "quay.io/a:1", "NOT A REF", False),
    # matchExact
    (identity.MatchExact(), "quay.io/a:1", "quay.io/a:1", True),
    (identity.MatchExact(), f"quay.io/a@{DIG}", "quay.io/a:1", False),
    (identity.MatchExact(), f"quay.io/a@{DIG}", f"quay.io/a@{DIG}", True),
    (identity.MatchExact(), "quay.io/a:1", "quay.io/a", False),
    # matchRepository
    (identity.MatchRepository(), "quay.io/a:1", "quay.io/a:2", True),
    (identity.MatchRepository(), "quay.io/a:1", "quay.io/a", True),
    (identity.MatchRepository(), "quay.io/a:1", "quay.io/ab:1", False),
    # exactReference: intended ignored
    (identity.ExactReference("quay.io/x:1"), "quay.io/a:1", "quay.io/x:1", True),
    (identity.ExactReference("quay.io/x:1"), "quay.io/x:1", "quay.io/x:2", False),
    (identity.ExactReference("busybox:1"), "quay.io/a:1", "docker.io/library/busybox:1", True),
    # exactRepository
    (identity.ExactRepository("quay.io/x"), "quay.io/a:1", "quay.io/x:9", True),
    (identity.ExactRepository("quay.io/x"), "quay.io/a:1", "quay.io/y:9", False),
    # remapIdentity (mirrors)
    (identity.RemapIdentity("mirror.local/quay", "quay.io"), "mirror.local/quay/ns/a:1", "quay.io/ns/a:1", True),
    (identity.RemapIdentity("mirror.local/quay", "quay.io"), "mirror.local/quay/ns/a:1", "mirror.local/quay/ns/a:1",
     False),
    (identity.RemapIdentity("mirror.local/quay", "quay.io"), f"mirror.local/quay/ns/a@{DIG}", "quay.io/ns/a:7", True),
    (identity.RemapIdentity("mirror.local/quay", "quay.io"), "mirror.local/quaynot/a:1", "quay.io/not/a:1", False),
    (identity.RemapIdentity("mirror.local/quay", "quay.io"), "mirror.local/quaynot/a:1", "mirror.local/quaynot/a:1",
     True),  # prefix not matching: intended kept
    (identity.RemapIdentity("example.com", "quay.io"), "example.com:5000/a:1", "quay.io/a:1", False),
    (identity.RemapIdentity("mirror.local", "docker.io/library"), "mirror.local/busybox:1",
     "docker.io/library/busybox:1", True),
    # remap result not canonical → no match
    (identity.RemapIdentity("mirror.local", "docker.io"), "mirror.local/busybox:1", "busybox:1", False),
])
def test_identity_matchers(matcher: identity.IdentityMatcher, intended: str, signed: str, ok: bool) -> None:
    assert matcher.matches(_i(intended), signed) is ok
    assert matcher.matches(None, signed) is (ok and matcher.type in ("exactReference", "exactRepository"))


def test_identity_from_json_roundtrip_and_errors() -> None:
    for obj in ({"type": "matchExact"}, {"type": "matchRepoDigestOrExact"}, {"type": "matchRepository"},
                {"type": "exactReference", "dockerReference": "quay.io/a:1"},
                {"type": "exactRepository", "dockerRepository": "quay.io/a"},
                {"type": "remapIdentity", "prefix": "m.local/q", "signedPrefix": "quay.io"}):
        assert identity.from_json(obj).to_json() == obj
    for bad in ({"type": "nope"}, {"type": "matchExact", "x": 1}, {"type": "exactReference"},
                {"type": "exactReference", "dockerReference": "quay.io/a"},
                {"type": "exactRepository", "dockerRepository": "Bad"},
                {"type": "remapIdentity", "prefix": "quay.io/a:1", "signedPrefix": "x.io"},
                {"type": "remapIdentity", "prefix": "m.local/Up", "signedPrefix": "x.io"}, [], {"type": 1}):
        with pytest.raises(PolicyError):
            identity.from_json(bad)
