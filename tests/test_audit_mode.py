"""Audit mode per scope (``enforce: false``, issue 14 #2), the parts that need no registry: what apply writes
(policy.json accepts the scope, the sidecar holds the requirements it will have, keyrings and registries.d as for an
enforced scope), how apply manages the sidecar (atomic, backed up, idempotent, never an unmanaged one), what
``policy explain`` says, and the ``audit --metrics`` file parsed by prometheus_client's own text parser. The
end-to-end answers against real skopeo are in tests/test_audit.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from atomicsig.format import policyjson
from atomicsig.policy import render
from tests.infra import POLICY, REGFILE, STATE

SIDECAR = render.AUDIT_PATH.lstrip("/")
SCOPE = "registry.example.com/prod"


def write_policy(tmp: Path, signer_pub: Path, *, enforce: bool | None) -> Path:
    (tmp / "prod.gpg").write_bytes(signer_pub.read_bytes())
    line = "" if enforce is None else f"    enforce: {str(enforce).lower()}\n"
    p = tmp / "p.yaml"
    p.write_text("default: reject\nkeys:\n  prod: {file: prod.gpg}\nscopes:\n"
                 f"  {SCOPE}:\n    signed-by: prod\n    lookaside: https://sigs.example.com/sigs\n{line}"
                 "  docker.io/library: {action: accept}\n")
    return p


def apply(cli: Any, yml: Path, root: Path, *extra: str) -> tuple[int, str, str]:
    return cli("policy", "apply", "-f", str(yml), "--root", str(root), *extra)  # type: ignore[no-any-return]


def test_audit_scope_is_accepted_now_and_its_requirements_go_to_the_sidecar(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                             signer_pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    yml = write_policy(tmp_path, signer_pub, enforce=False)
    code, _, err = apply(cli, yml, root)
    assert code == 0, err
    doc = json.loads((root / POLICY).read_text())
    assert policyjson.problems(doc) == []
    assert doc["default"] == [{"type": "reject"}]
    assert doc["transports"]["docker"][SCOPE] == [{"type": "insecureAcceptAnything"}]
    side = json.loads((root / SIDECAR).read_text())
    assert side["version"] == 1 and list(side["docker"]) == [SCOPE]
    (req,) = side["docker"][SCOPE]
    assert req["type"] == "signedBy" and req["keyType"] == "GPGKeys"
    assert (root / req["keyPath"].lstrip("/")).read_bytes() == signer_pub.read_bytes()  # the keyring is written
    regd = yaml.safe_load((root / REGFILE).read_text())  # so audit (and the node, later) find the signatures
    assert regd["docker"][SCOPE] == {"lookaside": "https://sigs.example.com/sigs"}
    state = json.loads((root / STATE).read_text())
    assert render.AUDIT_PATH in state["files"] and render.AUDIT_PATH in state["sha256"]
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    code, out, err = apply(cli, yml, root)  # unchanged YAML: nothing written
    assert code == 0 and out.strip() == "unchanged", out + err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before

    # Enforce = delete the line and re-apply: the real requirement in policy.json, the sidecar removed (backed up).
    write_policy(tmp_path, signer_pub, enforce=None)
    code, _, err = apply(cli, yml, root)
    assert code == 0, err
    doc = json.loads((root / POLICY).read_text())
    assert doc["transports"]["docker"][SCOPE] == [req]
    assert not (root / SIDECAR).exists()
    assert [p.name.split(".atomicsig-bak.")[0] for p in (root / SIDECAR).parent.glob("*.atomicsig-bak.*")] == \
        ["audit-scopes.json"]
    assert render.AUDIT_PATH not in json.loads((root / STATE).read_text())["files"]
    # And back to audit mode: the sidecar is written again, policy.json accepts again.
    write_policy(tmp_path, signer_pub, enforce=False)
    assert apply(cli, yml, root)[0] == 0
    assert json.loads((root / SIDECAR).read_text())["docker"][SCOPE] == [req]
    assert json.loads((root / POLICY).read_text())["transports"]["docker"][SCOPE][0]["type"] == \
        "insecureAcceptAnything"


def test_validate_warns_that_an_audit_scope_is_not_enforced(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("policy", "validate", "-f", str(write_policy(tmp_path, signer_pub, enforce=False)),
                       "--root", str(tmp_path))
    assert code == 0, err
    assert f"p.yaml:5: scope '{SCOPE}' is in audit mode (enforce: false): the node accepts its images without a " \
        "signature check" in err
    code, _, err = cli("policy", "validate", "-f", str(write_policy(tmp_path, signer_pub, enforce=None)),
                       "--root", str(tmp_path))
    assert code == 0 and "audit mode" not in err


def test_render_ships_the_sidecar(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    import base64

    code, out, err = cli("policy", "render", "-f", str(write_policy(tmp_path, signer_pub, enforce=False)))
    assert code == 0, err
    files = {f["path"]: f for f in yaml.safe_load(out)["spec"]["config"]["storage"]["files"]}
    side = base64.b64decode(files[render.AUDIT_PATH]["contents"]["source"].split(",", 1)[1])
    assert list(json.loads(side)["docker"]) == [SCOPE]
    policy = json.loads(base64.b64decode(files[render.POLICY_PATH]["contents"]["source"].split(",", 1)[1]))
    assert policy["transports"]["docker"][SCOPE] == [{"type": "insecureAcceptAnything"}]


def test_an_unmanaged_sidecar_is_never_overwritten(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    (root / SIDECAR).parent.mkdir(parents=True)
    (root / SIDECAR).write_text("mine\n")
    code, _, err = apply(cli, write_policy(tmp_path, signer_pub, enforce=False), root)
    assert code == 2 and "audit-scopes.json exists but is not managed by atomicsig" in err
    assert (root / SIDECAR).read_text() == "mine\n" and not (root / POLICY).exists()


def test_an_edited_sidecar_is_left_in_place_when_no_scope_is_audited_any_more(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                              signer_pub: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    yml = write_policy(tmp_path, signer_pub, enforce=False)
    assert apply(cli, yml, root)[0] == 0
    (root / SIDECAR).write_text((root / SIDECAR).read_text().replace("Managed", "Edited"))
    write_policy(tmp_path, signer_pub, enforce=None)
    code, _, err = apply(cli, yml, root)
    assert code == 0 and "no longer managed" in err, err
    assert "Edited" in (root / SIDECAR).read_text()


def test_dry_run_shows_the_sidecar_diff_and_writes_nothing(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    code, out, _ = apply(cli, write_policy(tmp_path, signer_pub, enforce=False), root, "--dry-run")
    assert code == 1 and f"b{render.AUDIT_PATH}" in out and '"signedBy"' in out
    assert not any(root.iterdir())


def test_explain_shows_the_mode(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    yml = write_policy(tmp_path, signer_pub, enforce=False)
    assert apply(cli, yml, root)[0] == 0
    code, out, err = cli("policy", "explain", "--root", str(root), f"{SCOPE}/app:1")
    assert code == 0, err
    assert "mode:        audit" in out and "requirements once enforced" in out and "1. signedBy" in out
    code, out, _ = cli("policy", "explain", "--root", str(root), "--json", f"{SCOPE}/app:1")
    info = json.loads(out)
    assert info["mode"] == "audit" and info["requirements_now"] == [{"type": "insecureAcceptAnything"}]
    assert info["requirements"][0]["type"] == "signedBy" and info["requirements"][0]["keys"]
    code, out, _ = cli("policy", "explain", "--root", str(root), "--json", "docker.io/library/busybox:1")
    assert json.loads(out)["mode"] == "enforce"
    # A scope edited by hand since apply is judged as policy.json says, whatever the sidecar claims.
    doc = json.loads((root / POLICY).read_text())
    doc["transports"]["docker"][SCOPE] = [{"type": "reject"}]
    (root / POLICY).write_text(json.dumps(doc))
    code, out, _ = cli("policy", "explain", "--root", str(root), "--json", f"{SCOPE}/app:1")
    assert json.loads(out)["mode"] == "enforce"


@pytest.mark.parametrize(("content", "fragment"), [
    (b"{not json", "not JSON"), (b'{"version": 2, "docker": {}}', "not an atomicsig audit-scopes file"),
    (b'{"version": 1, "docker": {"quay.io": [{"type": "signedBy"}]}}', "keyType")])
def test_a_broken_sidecar_is_bad_input(cli, tmp_path: Path, content: bytes, fragment: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text('{"default": [{"type": "reject"}]}')
    (root / SIDECAR).parent.mkdir(parents=True)
    (root / SIDECAR).write_bytes(content)
    code, _, err = cli("policy", "explain", "--root", str(root), "quay.io/x:1")
    assert code == 2 and "audit-scopes.json" in err and fragment in err, err


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_sidecar_is_refused_not_followed(cli, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    """/var/lib/atomicsig belongs to the daemons' user: a link there must not make a root audit read another file,
    nor a FIFO hang it (read as apply reads its files: regular, no link, bounded)."""
    import os

    root = tmp_path / "root"
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text('{"default": [{"type": "reject"}]}')
    (root / SIDECAR).parent.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text('{"version": 1, "docker": {}}')
    if kind == "symlink":
        (root / SIDECAR).symlink_to(outside)
    else:
        os.mkfifo(root / SIDECAR)
    code, _, err = cli("policy", "explain", "--root", str(root), "quay.io/x:1")
    assert code == 2 and "audit-scopes.json" in err and len(err.strip().splitlines()) == 1, err
    assert ("symlink" if kind == "symlink" else "not a regular file") in err


def test_metrics_file_parses_with_prometheus_client(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from atomicsig.cli.audit import write_metrics
    from atomicsig.ops.evaluate import Evaluation

    audit_scope, enforced = f"transports.docker['{SCOPE}']", "transports.docker['quay.io']"
    results = [Evaluation("a:1", "sha256:" + "a" * 64, audit_scope, decision="rejected", mode="audit"),
               Evaluation("b:1", "sha256:" + "b" * 64, audit_scope, decision="accepted", mode="audit"),
               Evaluation("c:1", "sha256:" + "c" * 64, enforced, decision="accepted"),
               Evaluation("d:1", "sha256:" + "d" * 64, enforced, decision="error"),
               Evaluation("e:1", "", "default", decision="rejected")]
    path = tmp_path / "audit.prom"
    path.write_text("old\n")
    write_metrics(str(path), results, started=1000.0, finished=1002.5, exit_code=3)
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    images = {(s.labels["scope"], s.labels["mode"], s.labels["result"]): s.value
              for s in families["atomicsig_audit_images"].samples}
    assert families["atomicsig_audit_images"].type == "gauge"
    assert images == {
        (audit_scope, "audit", "pass"): 1, (audit_scope, "audit", "fail"): 1,
        (audit_scope, "audit", "not_evaluated"): 0,
        (enforced, "enforce", "pass"): 1, (enforced, "enforce", "fail"): 0,
        (enforced, "enforce", "not_evaluated"): 1,
        ("default", "enforce", "pass"): 0, ("default", "enforce", "fail"): 1,
        ("default", "enforce", "not_evaluated"): 0}
    assert families["atomicsig_audit_last_run_timestamp_seconds"].samples[0].value == 1002.5
    assert families["atomicsig_audit_duration_seconds"].samples[0].value == 2.5
    assert families["atomicsig_audit_exit_code"].samples[0].value == 3
    assert [p.name for p in tmp_path.iterdir()] == ["audit.prom"]  # replaced in place, no temp file left

