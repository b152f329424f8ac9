"""Fuzzing, in three parts (docs/fuzzing.md):

* hypothesis properties over the same surfaces as the atheris targets in fuzz/ (fast, structured inputs);
* one slow test that runs every atheris target for a bounded budget through fuzz/run.py;
* regression tests for what fuzzing found, each replaying the input that crashed or hung.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomicsig.errors import InputError, PolicyError, ReferenceError_, SignatureFormatError
from atomicsig.format import blob, identity, payload, policyjson, reference
from atomicsig.openpgp import packets as openpgp
from atomicsig.policy import schema
from atomicsig.serve.server import ServerConfig, SignatureServer, _parse_range
from atomicsig.store import journal, registries_d
from atomicsig.sync import source

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
SEED_SIG = (FUZZ / "corpus" / "blob" / "uncompressed.sig").read_bytes()
SEED_PAYLOAD = openpgp.parse_message(SEED_SIG).literal
DIGEST = payload.parse(SEED_PAYLOAD).manifest_digest
HEX = DIGEST.split(":", 1)[1]
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- strategies -------------------------------------------------------------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_sep = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(lambda first, rest: first + "".join(s + a for s, a in rest), _alnum,
                       st.lists(st.tuples(_sep, _alnum), max_size=2))
_host = st.sampled_from(["", "docker.io/", "index.docker.io/", "localhost/", "localhost:5000/", "quay.io/",
                         "registry.example.com:5000/", "[::1]:5000/", "Reg.Example.COM/"])
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.sampled_from(["sha256:" + "a" * 64, "sha512:" + "0" * 128, DIGEST])


def _ref_text(host: str, comps: list[str], tag: str | None, dig: str | None) -> str:
    # Without a host, a first component with a "." would be read as the registry host; keep these valid.
    ns = "ns/" if not host and "." in comps[0] else ""
    return host + ns + "/".join(comps) + (f":{tag}" if tag else "") + (f"@{dig}" if dig else "")


_valid_refs = st.builds(_ref_text, _host, st.lists(_component, min_size=1, max_size=3), st.none() | _tag,
                        st.none() | _digest)
# Near-misses: valid references with one character inserted anywhere, plus arbitrary short text.
_mutated_refs = st.builds(lambda r, i, c: r[:i % (len(r) + 1)] + c + r[i % (len(r) + 1):], _valid_refs,
                          st.integers(0, 300), st.sampled_from([*list("/:@._-A \n\t\x00é²[]"), "..", "//"]))
_any_refs = _valid_refs | _mutated_refs | st.text(max_size=60)


# ---- reference --------------------------------------------------------------------------------------------------


@FAST
@given(_any_refs)
def test_reference_parse_only_raises_reference_error_and_normalizes_idempotently(value: str) -> None:
    try:
        ref = reference.parse(value)
    except ReferenceError_:
        return
    assert value.isascii() and not any(c.isspace() for c in value)
    norm = str(ref)
    assert reference.parse(norm) == ref
    assert reference.parse(norm, canonical=True) == ref
    assert reference.is_valid_domain(ref.domain) and reference.is_valid_path(ref.path)
    scopes = ref.with_tag_default().scopes()
    assert scopes[0] == ref.with_tag_default().policy_identity() and ref.name in scopes


@FAST
@given(_valid_refs)
def test_generated_valid_references_parse(value: str) -> None:
    """The generator above is only useful if its "valid" references really are accepted."""
    if len(value) < 200:  # long ones may pass 255 characters after normalization
        reference.parse(value)


# ---- payload ----------------------------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
_json = st.recursive(_json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=3), max_leaves=10)


def _payload_variant(ref: Any, dig: Any, typ: Any, opt: Any, extra: dict[str, Any]) -> bytes:
    crit = {"type": typ, "image": {"docker-manifest-digest": dig}, "identity": {"docker-reference": ref}, **extra}
    return json.dumps({"critical": crit, "optional": opt}).encode()


_payloads = st.builds(_payload_variant, st.sampled_from(["a/b:c", "", None, 3]) | _json,
                      _digest | st.sampled_from(["sha256:" + "A" * 64, "sha256:abc", None, DIGEST + "\n"]),
                      st.sampled_from([payload.SIGNATURE_TYPE, "atomic", None]),
                      st.fixed_dictionaries({}, optional={"creator": st.none() | st.text(max_size=5),
                                                          "timestamp": _json_scalars}) | _json,
                      st.sampled_from([{}, {"x": 1}]))


@FAST
@given(_payloads | st.binary(max_size=200))
def test_payload_parse_only_raises_format_error_and_round_trips(data: bytes) -> None:
    try:
        p = payload.parse(data)
    except SignatureFormatError:
        return
    reference.validate_digest(p.manifest_digest)
    if p.docker_reference and p.creator is not None and p.timestamp is not None:
        assert payload.parse(payload.build(p.docker_reference, p.manifest_digest, creator=p.creator,
                                           timestamp=p.timestamp)) == p


# ---- blob / OpenPGP ---------------------------------------------------------------------------------------------

_blobs = st.builds(lambda i, b, mode: (SEED_SIG[:i] + bytes([b]) + SEED_SIG[i + 1:]) if mode == 0 else
                   SEED_SIG[:i] if mode == 1 else b"\x00simple-signing\n" + SEED_SIG[i:],
                   st.integers(0, len(SEED_SIG) - 1), st.integers(0, 255), st.integers(0, 2))


@FAST
@given(_blobs | st.binary(max_size=100))
def test_blob_sniffing_and_openpgp_only_raise_format_error(data: bytes) -> None:
    try:
        body = blob.simple_signing_body(data)
    except SignatureFormatError:
        return
    assert data.endswith(body)
    try:
        msg = openpgp.parse_message(body)
    except SignatureFormatError:
        return
    assert msg.signatures and len(msg.literal) <= openpgp.MAX_DECOMPRESSED
    openpgp.untrusted_signer(body)


def test_zip_bomb_is_refused_not_expanded() -> None:
    import zlib

    inner = zlib.compress(b"\x00" * (openpgp.MAX_DECOMPRESSED + 1024), 9)
    body = b"\x02" + inner
    packet = bytes([0xC8, 0xFF]) + len(body).to_bytes(4, "big") + body
    with pytest.raises(SignatureFormatError, match="beyond the limit"):
        openpgp.parse_message(packet)


# ---- policy YAML, policy.json, registries.d ---------------------------------------------------------------------

_yaml_values = st.sampled_from(["reject", "accept", "signed", "k", "[k]", "{}", "[]", "null", "true", "1",
                                "file:///x", "https://h/p", "http://[x", "'A'", "{file: k.gpg}",
                                "{fingerprint: " + "A" * 40 + "}", "{type: matchRepository}", "!!binary AA==",
                                "&a [*a]", "*b", "'\x00'"])
_yaml_keys = st.sampled_from([*schema.TOP_KEYS, *schema.SCOPE_KEYS, *schema.KEY_KINDS, "k", "quay.io", "*.example.com",
                              "docker.io/library/x:1", "bad scope", "x"])


def _yaml_doc(entries: list[tuple[str, str, list[tuple[str, str]]]]) -> str:
    lines = []
    for key, value, children in entries:
        lines.append(f"{key}: {value}" if not children else f"{key}:")
        lines += [f"  {k}: {v}" for k, v in children]
    return "\n".join(lines) + "\n"


_yaml_docs = st.builds(_yaml_doc, st.lists(st.tuples(_yaml_keys, _yaml_values, st.lists(
    st.tuples(_yaml_keys, _yaml_values), max_size=3)), max_size=5))


@FAST
@given(_yaml_docs | st.text(max_size=80))
def test_policy_yaml_only_raises_policy_error(text: str) -> None:
    try:
        spec = schema.loads(text, "<h>", base_dir="/nonexistent")
    except InputError as exc:
        assert exc.message.startswith("<h>")
        return
    for s in spec.scopes:
        schema.validate_scope(s.scope)


@FAST
@given(_yaml_docs | _json.map(json.dumps) | st.text(max_size=80))
def test_policyjson_and_registries_d_only_raise_policy_error(text: str) -> None:
    try:
        doc = policyjson.loads(text, "<h>")
    except PolicyError:
        doc = None
    if doc is not None:
        assert isinstance(policyjson.problems(doc), list)
        policyjson.requirements_for(doc, "docker", "quay.io/a/b:1")
        assert policyjson.loads(policyjson.dumps(doc), "<again>") == doc
    try:
        cfg = registries_d.RegistriesConfig()
        registries_d.merge_file(cfg, text, "<h>")
    except PolicyError:
        return
    url, _ = cfg.lookaside_for(reference.parse("quay.io/a/b:1"), write=True, euid=0)
    assert isinstance(url, str) and url


@FAST
@given(st.dictionaries(st.sampled_from(["type", "dockerReference", "dockerRepository", "prefix", "signedPrefix",
                                        "x"]),
                       st.sampled_from(identity.IDENTITY_TYPES) | _any_refs | st.integers(), max_size=4))
def test_identity_from_json_only_raises_policy_error(obj: dict[str, Any]) -> None:
    try:
        m = identity.from_json(obj)
    except PolicyError:
        return
    assert identity.from_json(m.to_json()) == m
    m.matches(reference.parse("quay.io/a/b:1"), "quay.io/a/b:1")


# ---- journal and Content-Range ----------------------------------------------------------------------------------

_relpaths = st.builds(lambda repo, n: f"{repo}@sha256={HEX}/signature-{n}",
                      st.sampled_from(["app/web", "../etc", "a//b", "/abs", "A/b", "a/./b", "a/../b", "ok-1/x_y",
                                       "a\nb", "é"]) | _component,
                      st.sampled_from(["1", "127", "128", "0", "01", "1\n"]))
_lines = st.builds(lambda seq, op, rel, sha: f"{seq} {op} {rel} {sha}".encode(),
                   st.sampled_from(["1", "0", "-1", "x", "9" * 30]), st.sampled_from(["add", "del", "mv"]),
                   _relpaths, st.sampled_from(["a" * 64, "A" * 64, "a" * 63]))


@FAST
@given(st.lists(_lines | st.binary(max_size=40), max_size=6), st.booleans())
def test_journal_parser_yields_only_paths_inside_the_root(lines: list[bytes], torn: bool) -> None:
    data = b"\n".join(lines) + (b"" if torn else b"\n")
    try:
        for line, end in journal.iter_lines(data, 53):
            try:
                rec = journal.parse_line(line, end)
            except (journal.JournalError, InputError):
                continue
            rel = str(rec.path)
            assert os.path.normpath(rel) == rel and not rel.startswith("/") and ".." not in rel.split("/")
            assert os.path.normpath(os.path.join("/root", rel)).startswith("/root/")
    except journal.JournalError:
        pass


@FAST
@given(st.builds(lambda a, b, c: f"bytes {a}-{b}/{c}", *[st.sampled_from(["0", "5", "²", "9" * 20, "*", ""])] * 3)
       | st.text(max_size=30))
def test_content_range_parser_only_raises_source_error(value: str) -> None:
    with contextlib.suppress(source.SourceError):
        source._range(value, 6)
    total = source._total(value)
    assert total is None or total >= 0


# ---- serve ------------------------------------------------------------------------------------------------------

WRITE = "hypothesis-write-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[SignatureServer, Path, Path]:
    from atomicsig.store.directory import DirectoryStore

    top = tmp_path_factory.mktemp("fuzzserve")
    root, outside = top / "store", top / "outside"
    DirectoryStore(root).append_path("app/web", DIGEST, SEED_SIG)
    journal.Journal(root).rebuild()
    (outside / f"x@sha256={HEX}").mkdir(parents=True)
    (outside / f"x@sha256={HEX}" / "signature-1").write_bytes(b"outside")
    os.symlink(outside / f"x@sha256={HEX}", root / f"evil@sha256={HEX}")
    return SignatureServer(ServerConfig(sigstore=root, write_token=WRITE)), root, outside


def _call(app: SignatureServer, environ: dict[str, Any]) -> tuple[int, bytes]:
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return int(seen[0].split()[0]), body


_paths = st.sampled_from(["/.atomicsig/journal", f"/app/web@sha256={HEX}/signature-1",
                          f"/evil@sha256={HEX}/signature-1", f"/%2e%2e/outside/x@sha256={HEX}/signature-1",
                          f"/extensions/v2/app/web/signatures/{DIGEST}", "/healthz", "/metrics", "/",
                          f"/app//web@sha256={HEX}/signature-1", f"/app/web@sha256={HEX}/signature-0"])
_headers = st.fixed_dictionaries({}, optional={
    "HTTP_RANGE": st.sampled_from(["bytes=0-", "bytes=-5", "bytes=5-2", "bytes=²-", "bytes=" + "9" * 40 + "-",
                                   "bytes=0-1,3-4", "items=0-1"]) | st.text(max_size=12),
    "HTTP_IF_NONE_MATCH": st.sampled_from(["*", 'W/"x"', ""]) | st.text(max_size=8),
    "HTTP_IF_RANGE": st.text(max_size=8),
    "CONTENT_LENGTH": st.sampled_from(["0", "5", "²", "-1", "9" * 30, "abc"]),
    "HTTP_AUTHORIZATION": st.sampled_from([f"Bearer {WRITE}", "Bearer x", "Basic eA==", ""]),
    "CONTENT_TYPE": st.sampled_from(["application/json", "text/plain"])})
_bodies = st.sampled_from([b"", b"[" * 5000, b"{}", json.dumps({"schemaVersion": 2, "type": "atomic", "name":
                           f"{DIGEST}@h", "content": base64.b64encode(SEED_SIG).decode()}).encode()]) \
    | st.binary(max_size=50)


@FAST
@given(st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "get"]), _paths, _headers, _bodies)
def test_serve_answers_every_request_without_500_or_escape(served: tuple[SignatureServer, Path, Path],
                                                           method: str, path: str, headers: dict[str, str],
                                                           body: bytes) -> None:
    app, root, outside = served
    environ = {"REQUEST_METHOD": method, "REQUEST_URI": path, "wsgi.input": io.BytesIO(body), **headers}
    status, out = _call(app, environ)
    assert 200 <= status < 500, (status, out[:200])
    assert out != b"outside"
    assert sorted(p.name for p in outside.rglob("*")) == ["signature-1", f"x@sha256={HEX}"]
    if status == 201:  # undo, so every example sees the same store
        new = sorted((root / f"app/web@sha256={HEX}").glob("signature-*"))[-1]
        assert new.read_bytes() == SEED_SIG
        new.unlink()


# ---- the atheris targets, for a bounded budget ------------------------------------------------------------------


@pytest.mark.slow
def test_atheris_targets_run_clean(tmp_path: Path) -> None:
    """Every target for 10 s (≈ 1.5 min in all): exit 0 means no crash, hang or leak was found.

    A fixed libFuzzer seed makes the CI budget explore the same inputs each run, so a red CI is reproducible with
    the same command; open-ended exploration is the long campaign's job (docs/fuzzing.md).
    """
    proc = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--seconds", "10", "--libfuzzer-arg=-seed=1",
                           "--artifacts", str(tmp_path / "artifacts")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[-1] == "ok"]
    assert len(rows) == len(list(FUZZ.glob("fuzz_*.py"))), proc.stdout
    assert all(int(r[1]) > 0 for r in rows), proc.stdout  # every target executed inputs


# ---- regressions: each input fuzzing found, replayed ------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(p.name for p in (FUZZ / "regressions").iterdir()))
def test_fuzz_findings_replay_clean_through_their_target(target: str, tmp_path: Path) -> None:
    """libFuzzer given files instead of a corpus runs each once: exit 0 means none of them crashes any more."""
    pytest.importorskip("atheris")  # a test extra (CI has it in both environments: tests/conftest.py)
    files = sorted(str(p) for p in (FUZZ / "regressions" / target).iterdir())
    # TMPDIR: libFuzzer exits without Python's exit handlers, so the serve target's temp store is left behind.
    proc = subprocess.run([sys.executable, str(FUZZ / f"fuzz_{target}.py"), "-timeout=10", *files],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("Executed ") == len(files)


def test_reference_regex_is_linear_not_exponential() -> None:
    """Finding: ``[-]*`` separators made 26 characters take 30 s (c/image's Go regexp has no backtracking)."""
    started = time.process_time()
    for n in (30, 3000):
        with pytest.raises(ReferenceError_):
            reference.parse("a" * n + "!")
    with pytest.raises(ReferenceError_):
        reference.parse("registry.invalid/" + "a" * 40 + "_")
    # A generous bound: before the fix this loop did not finish at all.
    assert time.process_time() - started < 5


@pytest.mark.parametrize("value", ["busybox\n", "img:t\u00e1g", "quay.io/a@sha256:" + "a" * 64 + "\n",
                                   "dj_x.d/ubtu", "a/" + "b/" * 126 + "c"])
def test_reference_findings_are_refused(value: str) -> None:
    with pytest.raises(ReferenceError_):
        reference.parse(value)


def test_digest_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ReferenceError_):
        reference.validate_digest(DIGEST + "\n")
    bad = SEED_PAYLOAD.replace(DIGEST.encode(), DIGEST.encode() + b"\\n")
    with pytest.raises(SignatureFormatError):
        payload.parse(bad)


def test_deep_json_is_a_format_error_not_recursion_error() -> None:
    with pytest.raises(SignatureFormatError, match="nested too deeply"):
        payload.parse(b"[" * 100_000)
    with pytest.raises(PolicyError, match="nested too deeply"):
        policyjson.loads(b"[" * 100_000, "policy.json")


def test_registries_d_unhashable_key_and_deep_yaml_are_policy_errors() -> None:
    with pytest.raises(PolicyError, match="unhashable"):
        registries_d.merge_file(registries_d.RegistriesConfig(), "? [a]\n: b\n", "x.yaml")
    with pytest.raises(PolicyError):
        registries_d.merge_file(registries_d.RegistriesConfig(), "[" * 100_000, "x.yaml")


def test_policy_yaml_bad_ipv6_url_is_a_policy_error() -> None:
    text = (FUZZ / "regressions" / "policy_yaml" / "invalid-ipv6-url").read_text()
    with pytest.raises(PolicyError, match="Invalid IPv6 URL"):
        schema.loads(text, "p.yaml")


@pytest.mark.parametrize("header", ["bytes=\u00b2-", "bytes=-\u00b2", "bytes=" + "1" * 5000 + "-"])
def test_range_header_non_ascii_or_huge_digits_is_ignored(header: str) -> None:
    assert _parse_range(header, 100) is None


@pytest.mark.parametrize(("length", "body", "status"), [("\u00b2", b"{}", 400), ("9" * 5000, b"{}", 413),
                                                        ("", b"[" * 100_000, 400)])
def test_put_bad_length_or_deep_json_is_4xx(served: tuple[SignatureServer, Path, Path], length: str,
                                            body: bytes, status: int) -> None:
    app, _, _ = served
    environ = {"REQUEST_METHOD": "PUT", "REQUEST_URI": f"/extensions/v2/app/web/signatures/{DIGEST}",
               "HTTP_AUTHORIZATION": f"Bearer {WRITE}", "CONTENT_LENGTH": length, "wsgi.input": io.BytesIO(body)}
    assert _call(app, environ)[0] == status


def test_journal_line_over_limit_and_huge_content_range_are_format_errors() -> None:
    line = ("9" * 5000 + f" add a@sha256={HEX}/signature-1 " + "0" * 64).encode()
    with pytest.raises(journal.JournalError):
        journal.parse_line(line, 0)
    with pytest.raises(source.SourceError):
        source._range("bytes " + "1" * 5000 + "-2/3", 3)
    assert source._total("bytes */" + "1" * 5000) is None
