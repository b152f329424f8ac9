"""Differential test (issue #7): for a corpus of images, references and policy.json files, atomicsig's decision
equals skopeo's accept/reject on exactly the same inputs.

skopeo's side: ``skopeo --policy P --registries.d D copy docker://REF dir:…`` (exit 0 = accepted).
atomicsig's side, from the same two inputs and nothing else: ``atomicsig policy explain --json`` says which scope
wins, its requirement list and the lookaside a pull reads; each ``signedBy`` requirement is then decided by
``atomicsig verify`` with the requirement's keys and signedIdentity, ``insecureAcceptAnything`` accepts, ``reject``
rejects, and all requirements must pass (SPEC §2.2). Only ``keyData`` needs a translation here (decoded into a
key file), because ``verify`` takes keys as files or fingerprints.

The corpus covers 1-, 2- and 3-level repository paths, two keys, signatures that claim the right tag, another
tag, another repository, a digest-only identity and an upstream (remapped) identity, unsigned images, two
lookasides selected by registries.d scope, every signedIdentity type, keyPath/keyPaths/keyData, AND-ed
requirement lists and scopes at every level with their precedence. Every reference is tried by tag and by digest.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atomicsig.format import payload, reference
from atomicsig.gnupg.keyring import Keyring
from atomicsig.store.directory import DirectoryStore
from tests.infra import GpgHome, Registry, push_image

pytestmark = pytest.mark.slow

#: Images: repository path -> list of (signing key "A"/"B", identity template, sigstore "s1"/"s2").
#: ``{h}`` is the registry host, ``{d}`` the image's own digest.
IMAGES: dict[str, list[tuple[str, str, str]]] = {
    "solo": [("A", "{h}/solo:1", "s1")],                                   # 1-level path
    "ns/app": [("A", "{h}/ns/app:1", "s1"), ("B", "{h}/ns/app:2", "s1")],  # right tag by A, other tag by B
    "ns/sub/deep": [("B", "{h}/ns/sub/deep:1", "s1"),                      # 3-level path
                    ("A", "{h}/ns/other:1", "s1")],                        # A claims another repository
    "ns/digestonly": [("A", "{h}/ns/digestonly@{d}", "s1")],               # digest-only identity
    "mirror/app": [("A", "vendor.example.com/mirror/app:1", "s1")],        # upstream name, for remapIdentity
    "ns/unsigned": [],
    "ns/both": [("A", "{h}/ns/both:1", "s1"), ("B", "{h}/ns/both:1", "s1")],
    "alt/app": [("A", "{h}/alt/app:1", "s2")],                             # in the second lookaside
    "alt/wrongstore": [("A", "{h}/alt/wrongstore:1", "s1")],               # signed, but where alt/ never looks
    "ns/garbage": [("A", "{h}/ns/garbage:1", "s1")],                       # + an armored signature-1, below
}
#: Repositories whose lookaside directory gets an unreadable ``signature-1`` (armored text) before the good
#: signature: c/image fails the whole read (SPEC §3.2), so one good signature after it must not rescue the image.
GARBAGE_FIRST = ("ns/garbage",)


def _signed_by(key: str, identity: dict[str, str] | None = None) -> dict[str, Any]:
    """A signedBy requirement; ``key`` is a marker resolved to keyPath/keyPaths/keyData in :func:`_policies`."""
    req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "key": key}
    if identity is not None:
        req["signedIdentity"] = identity
    return req


ACCEPT = {"type": "insecureAcceptAnything"}
REJECT = {"type": "reject"}


def _policies(h: str, digests: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The policy corpus. Key markers: A (binary keyPath), Barm (armored keyPath), AB (one keyring with both),
    paths:A+Barm (keyPaths), data:A / data:AB (keyData)."""
    return {
        "accept-all": {"default": [ACCEPT]},
        "reject-all": {"default": [REJECT]},
        "A-default-identity": {"default": [_signed_by("A")]},
        "A-repoDigestOrExact": {"default": [_signed_by("A", {"type": "matchRepoDigestOrExact"})]},
        "Barm-matchRepository": {"default": [_signed_by("Barm", {"type": "matchRepository"})]},
        "paths-matchExact": {"default": [_signed_by("paths:A+Barm", {"type": "matchExact"})]},
        "data-exactReference": {"default": [_signed_by("data:AB", {"type": "exactReference",
                                                                    "dockerReference": f"{h}/ns/other:1"})]},
        "AB-exactRepository": {"default": [_signed_by("AB", {"type": "exactRepository",
                                                            "dockerRepository": f"{h}/ns/app"})]},
        "A-remap": {"default": [_signed_by("A", {"type": "remapIdentity", "prefix": f"{h}/mirror",
                                                 "signedPrefix": "vendor.example.com/mirror"})]},
        "data-A-remap-host": {"default": [_signed_by("data:A", {"type": "remapIdentity", "prefix": h,
                                                                "signedPrefix": "vendor.example.com"})]},
        "both-keys-required": {"default": [_signed_by("A"), _signed_by("Barm")]},
        "accept-and-signed": {"default": [ACCEPT, _signed_by("Barm", {"type": "matchRepository"})]},
        "signed-and-reject": {"default": [_signed_by("AB"), REJECT]},
        "scopes-every-level": {
            "default": [REJECT],
            "transports": {"docker": {
                "": [_signed_by("A")],                                           # transport-level default
                h: [_signed_by("Barm", {"type": "matchRepository"})],           # host:port
                f"{h}/ns": [ACCEPT],                                            # host:port/ns
                f"{h}/ns/app": [_signed_by("Barm", {"type": "matchRepository"})],  # host:port/ns/repo
                f"{h}/ns/app:1": [_signed_by("A")],                             # repo:tag
                f"{h}/ns/sub": [REJECT],                                        # 2-level namespace
                f"{h}/mirror": [_signed_by("A", {"type": "remapIdentity", "prefix": f"{h}/mirror",
                                                 "signedPrefix": "vendor.example.com/mirror"})],
                "other.example.com": [ACCEPT],                                  # never matches
            }}},
        "transport-default-only": {
            "default": [ACCEPT],
            "transports": {"docker": {"": [REJECT], f"{h}/alt/app": [_signed_by("paths:A+Barm")]},
                           "dir": {"": [REJECT]}}},
        "namespaces-and-tags": {
            "default": [_signed_by("AB", {"type": "matchRepository"})],
            "transports": {"docker": {
                f"{h}/ns/sub/deep": [_signed_by("data:A", {"type": "exactReference",
                                                          "dockerReference": f"{h}/ns/other:1"})],
                f"{h}/ns/both": [_signed_by("A"), _signed_by("Barm")],
                f"{h}/ns/both:2": [REJECT],
                f"{h}/solo:1": [ACCEPT, _signed_by("Barm")],
                f"{h}/alt": [_signed_by("AB", {"type": "matchExact"})],
                f"{h}/ns/digestonly": [_signed_by("A", {"type": "matchExact"})],
                f"{h}/ns/app@{digests['ns/app']}": [ACCEPT],                    # repo@digest scope
            }}},
    }


@dataclass
class Corpus:
    host: str
    work: Path
    regd: Path
    keys: dict[str, Path]
    digests: dict[str, str]
    policies: dict[str, Path] = field(default_factory=dict)


def _resolve_keys(req: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
    out = {k: v for k, v in req.items() if k != "key"}
    marker = req["key"]
    if marker.startswith("paths:"):
        out["keyPaths"] = [str(keys[k]) for k in marker[len("paths:"):].split("+")]
    elif marker.startswith("data:"):
        out["keyData"] = base64.b64encode(keys[marker[len("data:"):]].read_bytes()).decode()
    else:
        out["keyPath"] = str(keys[marker])
    return out


def _materialize(doc: Any, keys: dict[str, Path]) -> Any:
    if isinstance(doc, dict):
        if doc.get("type") == "signedBy" and "key" in doc:
            return _resolve_keys(doc, keys)
        return {k: _materialize(v, keys) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_materialize(x, keys) for x in doc]
    return doc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, registry: Registry, signer: GpgHome,
           other_signer: GpgHome) -> Corpus:
    work = tmp_path_factory.mktemp("differential")
    h = registry.host
    stores = {"s1": work / "sigstore1", "s2": work / "sigstore2"}
    homes = {"A": signer, "B": other_signer}
    digests = {repo: push_image(h, f"{repo}:1", f"differential-{repo}", work) for repo in IMAGES}
    for repo in GARBAGE_FIRST:
        DirectoryStore(stores["s1"]).append(reference.parse(f"{h}/{repo}:1"), digests[repo],
                                            b"-----BEGIN PGP MESSAGE-----\n\nnot a signature\n")
    for repo, sigs in IMAGES.items():
        for key, ident, store in sigs:
            home = homes[key]
            identity = ident.format(h=h, d=digests[repo])
            blob = Keyring(str(home.path)).sign(payload.build(identity, digests[repo]), home.fingerprint, None)
            # Stored under the image's own repository whatever it claims: that is where a pull looks.
            DirectoryStore(stores[store]).append(reference.parse(f"{h}/{repo}:1"), digests[repo], blob)
    regd = work / "registries.d"
    regd.mkdir()
    (regd / "differential.yaml").write_text(
        f"default-docker:\n  lookaside: file://{stores['s1']}\n"
        f"docker:\n  {h}/alt:\n    lookaside: file://{stores['s2']}\n")
    keys = {"A": signer.export_public(work / "A.gpg"), "Barm": other_signer.export_public(work / "B.asc", armor=True)}
    keys["AB"] = work / "AB.gpg"
    keys["AB"].write_bytes(keys["A"].read_bytes() + other_signer.export_public(work / "B.gpg").read_bytes())
    c = Corpus(h, work, regd, keys, digests)
    for name, doc in _policies(h, digests).items():
        path = work / f"policy-{name}.json"
        path.write_text(json.dumps(_materialize(doc, keys), indent=2))
        c.policies[name] = path
    return c


# ---- the two deciders -----------------------------------------------------------------------------------------


def skopeo_accepts(c: Corpus, policy: Path, ref: str) -> tuple[bool, str]:
    """``--remove-signatures`` keeps the comparison about the policy: without it skopeo also *copies* the
    signatures to dir:, and an unrecognized lookaside blob then fails even an insecureAcceptAnything pull
    (c/image reads signatures for the copy, not for the policy) — a property of copying, not of trust."""
    dest = tempfile.mkdtemp(dir=c.work, prefix="pulled-")
    proc = subprocess.run(["skopeo", "--policy", str(policy), "--registries.d", str(c.regd), "copy", "--quiet",
                           "--remove-signatures", "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, proc.stderr.strip()


def _atomicsig(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atomicsig", *args], capture_output=True, text=True, timeout=120)


def _identity_args(ident: dict[str, str] | None) -> list[str]:
    kind = (ident or {}).get("type", "matchRepoDigestOrExact")
    if kind == "matchRepoDigestOrExact":
        return ["--match", "repo-digest-or-exact"]
    if kind == "matchExact":
        return ["--match", "exact"]
    if kind == "matchRepository":
        return ["--match", "repository"]
    assert ident is not None
    if kind == "exactReference":
        return ["--exact-reference", ident["dockerReference"]]
    if kind == "exactRepository":
        return ["--exact-repository", ident["dockerRepository"]]
    if kind == "remapIdentity":
        return ["--remap", f"{ident['prefix']}={ident['signedPrefix']}"]
    raise AssertionError(f"unknown signedIdentity {kind}")


class AtomicsigDecider:
    """policy explain → requirement list → verify per signedBy; verify results are memoized per input set."""

    def __init__(self, c: Corpus) -> None:
        self.c = c
        self._memo: dict[tuple[str, ...], tuple[bool, str]] = {}
        self._lock = threading.Lock()

    def _key_files(self, req: dict[str, Any]) -> list[str]:
        if "keyPath" in req:
            return [req["keyPath"]]
        if "keyPaths" in req:
            return list(req["keyPaths"])
        data = base64.b64decode(req["keyData"])
        f = self.c.work / f"keydata-{abs(hash(data)):x}.gpg"
        if not f.exists():
            f.write_bytes(data)
        return [str(f)]

    def _verify(self, ref: str, req: dict[str, Any], lookaside: str) -> tuple[bool, str]:
        args = [ref, "--sigstore", lookaside, "--tls-verify=false", "--json",
                *_identity_args(req.get("signedIdentity"))]
        for k in self._key_files(req):
            args += ["--key", k]
        key = tuple(args)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        proc = _atomicsig("verify", *args)
        if proc.returncode not in (0, 1):
            result = (False, f"verify exit {proc.returncode}: {proc.stderr.strip()}")
        else:
            result = (proc.returncode == 0, json.loads(proc.stdout)["images"][0]["reason"])
        with self._lock:
            self._memo[key] = result
        return result

    def accepts(self, policy: Path, ref: str) -> tuple[bool, str]:
        proc = _atomicsig("policy", "explain", f"docker://{ref}", "--policy", str(policy),
                          "--registries.d", str(self.c.regd), "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["requirements"], f"empty requirement list for {ref}"
        why = [f"scope {info['scope']}"]
        for item in info["requirements"]:
            req = item["requirement"]
            if req["type"] == "insecureAcceptAnything":
                continue
            if req["type"] == "reject":
                return False, "; ".join([*why, "reject"])
            assert req["type"] == "signedBy", req
            ok, reason = self._verify(ref, req, info["lookaside"])
            why.append(reason)
            if not ok:
                return False, "; ".join(why)
        return True, "; ".join(why)


# ---- the test ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    policy: str
    ref: str


def test_atomicsig_decides_like_skopeo(corpus: Corpus) -> None:
    h = corpus.host
    refs = [f"{h}/{repo}:1" for repo in IMAGES] + [f"{h}/{repo}@{d}" for repo, d in corpus.digests.items()]
    cases = [Case(p, r) for p in corpus.policies for r in refs]
    decider = AtomicsigDecider(corpus)

    def run(case: Case) -> tuple[Case, bool, str, bool, str]:
        policy = corpus.policies[case.policy]
        s_ok, s_why = skopeo_accepts(corpus, policy, case.ref)
        a_ok, a_why = decider.accepts(policy, case.ref)
        return case, s_ok, s_why, a_ok, a_why

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, cases))

    disagreements = [f"  {c.policy:24} {c.ref}\n      skopeo {'ACCEPT' if s else 'REJECT'}: {sw[-300:]}\n"
                     f"      atomicsig {'ACCEPT' if a else 'REJECT'}: {aw[-300:]}"
                     for c, s, sw, a, aw in results if s != a]
    accepted = sum(1 for _, s, _, _, _ in results if s)
    print(f"\n{len(cases)} cases, skopeo accepted {accepted}, rejected {len(cases) - accepted}, "
          f"{len(disagreements)} disagreements")
    assert len(cases) >= 150
    # A corpus where one side is (almost) constant would not test anything.
    assert 40 <= accepted <= len(cases) - 40, f"unbalanced corpus: {accepted} of {len(cases)} accepted"
    assert not disagreements, "atomicsig and skopeo disagree:\n" + "\n".join(disagreements)
