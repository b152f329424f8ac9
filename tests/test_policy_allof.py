"""Several signers, all required (issue 14 #5): ``signed-by-all`` in the policy YAML, ``verify --require-all``,
and ``audit`` / ``policy explain --check`` naming the required signer that has no valid signature.

The YAML compiles to one ``signedBy`` per required key set (c/image ANDs a scope's requirements, SPEC §5.5); the
slow tests hold that against real skopeo: signed by both → accepted, by either one alone → refused, and audit,
verify and explain give skopeo's answer and name the missing signer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import PolicyError
from atomicsig.format import keyfile_name, policyjson
from atomicsig.policy import render, schema
from atomicsig.policy.keymaterial import KeyMaterial
from tests.infra import GpgHome, Registry, push_image, skopeo_pull

FPRS = {"build": "B" * 40, "sec1": "C" * 40, "sec2": "D" * 40, "old": "E" * 40}
KEYS = "".join(f"  {n}: {{fingerprint: {f}}}\n" for n, f in FPRS.items()) + "  ci: {cosign: c.pub}\n"
HEAD = f"default: reject\nkeys:\n{KEYS}scopes:\n  quay.io/ns:\n"  # the scope is line 9, its keys from line 10


def parse(text: str) -> schema.PolicySpec:
    return schema.loads(text, "p.yaml", "/base")


def material(**fprs: tuple[str, ...]) -> dict[str, KeyMaterial]:
    """Key bytes per name (the name itself) with the given fingerprints (default: the name's own, FPRS)."""
    return {n: KeyMaterial(n, "fingerprint", n.encode(), fprs.get(n, (FPRS[n],))) for n in FPRS}


def keyring(names: tuple[str, ...]) -> str:
    data = b"".join(n.encode() for n in sorted(names))
    return f"/etc/pki/containers/atomicsig-{'+'.join(sorted(names))}-{hashlib.sha256(data).hexdigest()[:12]}.gpg"


# ---- schema and render ------------------------------------------------------------------------------------------


def test_each_required_signer_is_one_signedby_with_its_own_keyring() -> None:
    spec = parse(HEAD + "    signed-by-all: [build, [sec1, sec2]]\n    identity: {type: matchRepository}\n")
    assert spec.scopes[0].signed_by_all == (("build",), ("sec1", "sec2"))
    compiled = render.compile_spec(spec, material())
    reqs = compiled.docker_scopes["quay.io/ns"]
    assert reqs == [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": keyring(names),
                     "signedIdentity": {"type": "matchRepository"}} for names in (("build",), ("sec1", "sec2"))]
    assert set(compiled.key_files()) == {keyring(("build",)), keyring(("sec1", "sec2"))}
    assert compiled.files[keyring(("sec1", "sec2"))] == b"sec1sec2"  # the any-of group: one combined keyring
    assert policyjson.problems(render.merge(policyjson.SHIPPED_DEFAULT, compiled, set())) == []


def test_signed_by_comes_first_and_key_files_are_shared_with_any_of() -> None:
    """``signed-by`` keeps compiling exactly as before (its requirement first, same file name), and a signer of
    ``signed-by-all`` that another scope lists in ``signed-by`` uses the same keyring file."""
    spec = parse(HEAD + "    signed-by: [sec1, sec2]\n    signed-by-all: [build]\n"
                 "  quay.io/other:\n    signed-by: build\n")
    compiled = render.compile_spec(spec, material())
    assert [r["keyPath"] for r in compiled.docker_scopes["quay.io/ns"]] == [keyring(("sec1", "sec2")),
                                                                          keyring(("build",))]
    assert compiled.docker_scopes["quay.io/other"] == [compiled.docker_scopes["quay.io/ns"][1]]
    assert len(compiled.key_files()) == 2


@pytest.mark.parametrize(("body", "line", "fragment"), [
    ("    signed-by-all: []\n", 10, "signed-by-all must be a non-empty list of required signers"),
    ("    signed-by-all: build\n", 10, "signed-by-all must be a non-empty list"),
    ("    signed-by-all:\n", 10, "signed-by-all must be a non-empty list"),
    ("    signed-by-all: [build, []]\n", 10, "an empty group requires no signer"),
    ("    signed-by-all:\n    - build\n    - nokey\n", 12, "unknown key 'nokey' (declare it under 'keys:')"),
    ("    signed-by-all: [build, ci]\n", 10, "'ci' is a cosign key (use sigstore-signed-by)"),
    ("    signed-by-all:\n    - [sec1, build]\n    - build\n", 12,
     "key 'build' is listed twice in signed-by-all (first at line 11)"),
    ("    signed-by-all: [sec1, sec1]\n", 10, "listed twice"),
    ("    signed-by: [build, old]\n    signed-by-all:\n    - sec1\n    - [sec2, old]\n", 13,
     "key 'old' is in both signed-by (any one of its keys is enough) and signed-by-all (every entry is required)"),
    ("    signed-by-all: [build, [[sec1]]]\n", 10, "groups do not nest"),
    ("    action: accept\n    signed-by-all: [build, sec1]\n", 10, "action accept takes no keys"),
])
def test_bad_all_of_names_the_line(body: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(HEAD + body)
    assert exc.value.message.startswith(f"p.yaml:{line}:"), exc.value.message
    assert fragment in exc.value.message, exc.value.message


def test_two_signers_holding_one_key_are_refused() -> None:
    """Two names for one key (or a keyring holding the other's key): one signature would pass both signedBy
    requirements, so "build AND sec1" would quietly mean "either"; refused with the scope's line."""
    spec = parse(HEAD + "    signed-by-all: [build, [sec1, sec2]]\n")
    with pytest.raises(PolicyError, match=r"^p\.yaml:9: scope 'quay.io/ns': required signers 'build' and "
                                          r"'sec1\+sec2' both hold key B{40}"):
        render.compile_spec(spec, material(sec2=(FPRS["sec2"], FPRS["build"])))
    # a shared key inside one any-of group is fine: the group is one signer
    render.compile_spec(spec, material(sec2=(FPRS["sec1"],)))


@given(st.lists(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), min_size=1, max_size=4, unique=True),
       st.binary(max_size=8), st.sampled_from(["gpg", "pub"]))
def test_keyring_file_names_read_back_as_their_key_set(names: list[str], data: bytes, ext: str) -> None:
    name = keyfile_name.build(tuple(names), data, ext)
    assert name == render.keyring_name(tuple(names), data, ext)
    assert keyfile_name.key_names(name) == tuple(sorted(names))


@pytest.mark.parametrize("name", ["release.gpg", "atomicsig-build.gpg", "atomicsig-build-0123456789ab.gpg\n",
                                  "atomicsig-Build-0123456789ab.gpg", "atomicsig-build-0123456789ab.asc"])
def test_foreign_keyring_names_carry_no_key_set(name: str) -> None:
    assert keyfile_name.key_names(name) is None


def test_validate_refuses_bad_all_of_with_exit_2(cli, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Through the CLI with real key files: one line naming file and line, exit 2, nothing written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"default: reject\nkeys:\n  build: {{file: {signer_pub}}}\nscopes:\n  quay.io/ns:\n"
                   "    signed-by-all: []\n")
    code, _, err = cli("policy", "validate", "-f", str(bad), "--root", str(tmp_path / "node"))
    assert code == 2 and f"{bad}:6:" in err and len(err.strip().splitlines()) == 1, err
    same = tmp_path / "same.yaml"  # the same public key file under two names
    same.write_text(f"default: reject\nkeys:\n  build: {{file: {signer_pub}}}\n  security: {{file: {signer_pub}}}\n"
                    "scopes:\n  quay.io/ns:\n    signed-by-all: [build, security]\n")
    code, _, err = cli("policy", "apply", "-f", str(same), "--root", str(tmp_path / "node"))
    assert code == 2 and f"{same}:6:" in err and "both hold key" in err, err
    assert not (tmp_path / "node").exists()


# ---- verify --require-all (offline: a digest reference and a directory sigstore) ---------------------------------

DIG = "sha256:" + "7" * 64
REF = f"quay.io/team/app@{DIG}"


def test_verify_require_all(cli, signer: GpgHome, other_signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    code, _, err = cli("sign", "--gnupghome", str(signer.path), "--key", signer.fingerprint, "--sigstore",
                       str(store), REF)
    assert code == 0, err
    args = ("verify", "--sigstore", str(store), "--key", str(signer_pub), "--key", str(other_pub))
    code, out, err = cli(*args, REF)
    assert code == 0, out + err  # without --require-all: any one key is enough (unchanged)
    code, out, err = cli(*args, "--require-all", "--json", REF)
    assert code == 1, out + err
    img = json.loads(out)["images"][0]
    assert img["outcome"] == "rejected"
    assert img["reason"].startswith(f"required signer {other_pub} ({other_signer.fingerprint}): no valid signature")
    assert [(r["signer"], r["accepted"]) for r in img["required"]] == [(str(signer_pub), True),
                                                                       (str(other_pub), False)]
    assert img["signatures"][0]["accepted"] and img["signatures"][0]["signer"] == signer.fingerprint
    code, out, _ = cli(*args, "--require-all", REF)
    assert code == 1
    assert f"required signer {other_pub} ({other_signer.fingerprint}): no valid signature" in out
    assert f"required signer {signer_pub} ({signer.fingerprint}): signed" in out
    code, _, err = cli("sign", "--gnupghome", str(other_signer.path), "--key", other_signer.fingerprint,
                       "--sigstore", str(store), REF)
    assert code == 0, err
    code, out, err = cli(*args, "--require-all", "--json", REF)
    assert code == 0, out + err
    assert [r["accepted"] for r in json.loads(out)["images"][0]["required"]] == [True, True]
    # the same key under two --key values would let one signature count twice: exit 2
    code, _, err = cli("verify", "--sigstore", str(store), "--key", str(signer_pub), "--key", signer.fingerprint,
                       "--gnupghome", str(signer.path), "--require-all", REF)
    assert code == 2 and "both trust key" in err, err


# ---- against real skopeo --------------------------------------------------------------------------------------


@dataclass
class World:
    host: str
    work: Path
    store: Path
    root: Path  # the node tree, applied with --keypaths-under-root
    policy: Path  # the YAML
    pubs: dict[str, Path]  # build, security, third: one public key file each
    group: Path  # security + third in one keyring: the any-of signer as one --key
    fpr: dict[str, str]  # signer label -> the fingerprints messages name
    digests: dict[str, str]

    @property
    def node_policy(self) -> Path:
        return self.root / "etc/containers/policy.json"

    def skopeo_accepts(self, ref: str, root: Path | None = None) -> bool:
        root = root or self.root
        return skopeo_pull(ref, root / "etc/containers/policy.json", root / "etc/containers/registries.d",
                           self.work).returncode == 0


def _run(*args: str) -> None:
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    assert run_main(group, list(args)) == 0, args


@pytest.fixture(scope="module")
def world(registry: Registry, signer: GpgHome, other_signer: GpgHome,
          tmp_path_factory: pytest.TempPathFactory) -> World:
    """Images in a real registry signed by build (``signer``), security (``other_signer``), both, none, or build
    and a third key; a policy with ``two: signed-by-all: [build, security]`` and ``grp: signed-by-all: [build,
    [security, third]]``, applied to a node tree."""
    work = tmp_path_factory.mktemp("allof")
    third = GpgHome(work / "third", email="third@example.com").create()
    h, store = registry.host, work / "sigstore"
    names = [f"two/{n}:1" for n in ("both", "build", "security", "none")] + ["grp/third:1", "grp/build:1"]
    digests = {f"{h}/{n}": push_image(h, n, seed=f"allof-{n}", workdir=work) for n in names}
    for home, signed in ((signer, ("two/both", "two/build", "grp/third", "grp/build")),
                         (other_signer, ("two/both", "two/security")), (third, ("grp/third",))):
        for n in signed:
            _run("sign", "--gnupghome", str(home.path), "--key", home.fingerprint, "--sigstore", str(store),
                 "--tls-verify=false", f"{h}/{n}:1")
    third.kill_agent()
    pubs = {"build": signer.export_public(work / "build.gpg"),
            "security": other_signer.export_public(work / "security.gpg"),
            "third": third.export_public(work / "third.gpg")}
    group = work / "security+third.gpg"
    group.write_bytes(pubs["security"].read_bytes() + pubs["third"].read_bytes())
    policy = work / "policy.yaml"
    policy.write_text("default: reject\nkeys:\n" + "".join(f"  {n}: {{file: {p}}}\n" for n, p in pubs.items()) +
                      f"scopes:\n  {h}/two:\n    signed-by-all: [build, security]\n    lookaside: file://{store}\n"
                      f"  {h}/grp:\n    signed-by-all: [build, [security, third]]\n    lookaside: file://{store}\n")
    root = work / "node"
    _run("policy", "apply", "-f", str(policy), "--root", str(root), "--keypaths-under-root")
    fpr = {"build": signer.fingerprint, "security": other_signer.fingerprint,
           "security or third": ", ".join(sorted((other_signer.fingerprint, third.fingerprint)))}
    return World(h, work, store, root, policy, pubs, group, fpr, digests)


def _missing(w: World) -> dict[str, str | None]:
    """Each image and the required signer it lacks (None: it has every signature)."""
    h = w.host
    return {f"{h}/two/both:1": None, f"{h}/two/build:1": "security", f"{h}/two/security:1": "build",
            f"{h}/two/none:1": "build", f"{h}/grp/third:1": None, f"{h}/grp/build:1": "security or third"}


@pytest.mark.slow
def test_all_of_agrees_with_skopeo(cli, world: World) -> None:  # type: ignore[no-untyped-def]
    """skopeo: every signature present → accepted, any one missing → refused. ``audit``, ``verify --require-all``
    and ``policy explain --check`` give the same answer for each image and name the signer that is missing."""
    w, missing = world, _missing(world)
    assert [len(reqs) for reqs in json.loads(w.node_policy.read_text())["transports"]["docker"].values()] == [2, 2]
    code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(w.root), *missing)
    assert code == 1, err
    audited = {img["reference"]: img for img in json.loads(out)["images"]}
    for ref, who in missing.items():
        assert w.skopeo_accepts(ref) == (who is None), ref
        img = audited[ref]
        assert img["decision"] == ("accepted" if who is None else "rejected"), (ref, img["reason"])
        assert [q["signer"] for q in img["requirements"]] == (
            ["build", "security"] if "/two/" in ref else ["build", "security or third"])
        if who is not None:
            assert f"required signer {who} ({w.fpr[who]}): no valid signature" in img["reason"], img["reason"]
        if ref.endswith("/two/build:1"):
            assert [q["outcome"] for q in img["requirements"]] == ["pass", "fail"]

        # one --key per required signer; the any-of group [security, third] as one keyring file
        second = w.pubs["security"] if "/two/" in ref else w.group
        code, out, err = cli("verify", "--tls-verify=false", "--sigstore", str(w.store), "--require-all", "--json",
                             "--key", str(w.pubs["build"]), "--key", str(second), ref)
        assert code == (0 if who is None else 1), out + err
        verdict = json.loads(out)["images"][0]
        assert verdict["digest"] == w.digests[ref]
        if who is not None:
            name = w.pubs.get(who, w.group)  # "security or third": the group's keyring file
            assert f"required signer {name} ({w.fpr[who]}): no valid signature" in verdict["reason"], verdict

        code, out, err = cli("policy", "explain", "--root", str(w.root), "--check", "--tls-verify=false", ref)
        assert code == (0 if who is None else 1), out + err
        assert "required signer: build" in out
        if who is None:
            assert "decision:    ACCEPTED" in out
        else:
            assert "decision:    REJECTED" in out and f"(required signer {who}): fail: required signer {who}" in out
    code, out, _ = cli("policy", "explain", "--root", str(w.root), "--check", "--tls-verify=false", "--json",
                       f"{w.host}/two/security:1")
    assert code == 1
    info = json.loads(out)
    assert [r.get("signer") for r in info["requirements"]] == ["build", "security"]
    assert info["evaluations"][0]["decision"] == "rejected"
    assert [q["signer"] for q in info["evaluations"][0]["requirements"]] == ["build", "security"]
    code, _, err = cli("policy", "explain", "--root", str(w.root), "--check", f"oci:{w.work}/layout")
    assert code == 2 and "docker:// images only" in err


@pytest.mark.slow
def test_report_names_the_missing_signer(cli, world: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.yaml"
    ref = f"{world.host}/two/build:1"
    code, _, err = cli("audit", "--tls-verify=false", "--root", str(world.root), "--report", str(report), ref)
    assert code == 1, err
    results = {r["rule"]: r for r in yaml.safe_load(report.read_text())["results"]}
    assert results["signedBy[0]"]["result"] == "pass"
    assert results["signedBy[1]"]["result"] == "fail"
    assert results["signedBy[1]"]["message"].startswith(
        f"required signer security ({world.fpr['security']}): no valid signature")


@pytest.mark.slow
def test_reapply_writes_nothing_and_dropping_a_signer_relaxes_the_scope(cli, world: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same YAML again: unchanged. Without ``security`` in signed-by-all: its keyring leaves the node, the
    scope has one signedBy, and an image signed by build alone is accepted by skopeo and by audit."""
    root = tmp_path / "node"
    shutil.copytree(world.root, root, symlinks=True)
    (root / "etc/containers/policy.json").write_text(world.node_policy.read_text().replace(str(world.root),
                                                                                              str(root)))
    code, out, err = cli("policy", "apply", "-f", str(world.policy), "--root", str(world.root),
                         "--keypaths-under-root")
    assert code == 0 and out.strip().endswith("unchanged"), out + err
    relaxed = tmp_path / "relaxed.yaml"
    relaxed.write_text(world.policy.read_text().replace("signed-by-all: [build, security]", "signed-by-all: [build]"))
    before = {p.name for p in (root / "etc/pki/containers").iterdir()}
    code, _, err = cli("policy", "apply", "-f", str(relaxed), "--root", str(root), "--keypaths-under-root")
    assert code == 0, err
    after = {p.name for p in (root / "etc/pki/containers").iterdir() if ".atomicsig-bak." not in p.name}
    assert {n for n in before - after if n.startswith("atomicsig-security-")}  # only grp's group keyring is left
    assert not any(n.startswith("atomicsig-security-") for n in after)
    reqs = json.loads((root / "etc/containers/policy.json").read_text())["transports"]["docker"][f"{world.host}/two"]
    assert len(reqs) == 1
    ref = f"{world.host}/two/build:1"
    assert world.skopeo_accepts(ref, root)
    code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(root), ref)
    assert code == 0 and json.loads(out)["images"][0]["decision"] == "accepted", out + err
