"""CLI output, exit codes and consistency (issue 11): closed stdout, per-image lines, --json-lines, --dry-run exit
codes, --key forms, --json everywhere, typos that used to fail silently, refused uploads, multi-arch warnings."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra import GpgHome, Registry, push_index, serve_sigstore

TOKEN = "write-token-" + "t" * 24


def ref(i: int, host: str = "quay.io") -> str:
    return f"{host}/team{i % 3}/app{i}:v{i}@sha256:{i:064x}"


def sigfiles(store: Path) -> set[str]:
    return {str(p) for p in store.rglob("signature-*") if p.is_file()} if store.exists() else set()


def run_closed_stdout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """``python -m atomicsig ARGS`` with stdout a pipe whose read end is already closed (``… | head`` that exited)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "atomicsig", *args], stdout=w, stderr=subprocess.PIPE,
                              env={**os.environ, **env}, timeout=120, check=False)
    finally:
        os.close(w)


# ---- 1. closed stdout -------------------------------------------------------------------------------------------

def test_closed_stdout_exits_3(signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:
    env = {"GNUPGHOME": str(signer.path)}
    store = tmp_path / "store"
    res = run_closed_stdout("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--json", ref(1), env=env)
    assert res.returncode == 3, res.stderr
    err = res.stderr.decode()
    assert err.count("stdout closed (broken pipe)") == 1 and "Traceback" not in err and "Exception" not in err
    assert len(sigfiles(store)) == 1  # the work was done; only the report was lost
    res = run_closed_stdout("verify", "--key", str(signer_pub), "--sigstore", str(store),
                            ref(1).replace(":v1@", "@"), env=env)
    assert res.returncode == 3 and b"stdout closed" in res.stderr, res.stderr
    # A rejected image with a closed stdout is still "could not report", not "rejected"
    res = run_closed_stdout("verify", "--key", str(signer_pub), "--sigstore", str(store), ref(2), env=env)
    assert res.returncode == 3, res.stderr


# ---- 2. one line per image as it completes ----------------------------------------------------------------------

def test_every_image_gets_a_line(cli, signer: GpgHome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"GNUPGHOME": str(signer.path)}
    store = tmp_path / "store"
    refs = [ref(i) for i in range(1, 31)]
    code, out, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), *refs, env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 30 and all(ln.startswith("signed ") for ln in lines)
    assert {ln.rsplit(" -> ", 1)[1] for ln in lines} == sigfiles(store)
    assert "30 signed, 0 already signed, 0 failed" in err
    code, out, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--json-lines",
                         *refs, "quay.io/Bad:1@sha256:" + "a" * 64, env=env)
    assert code == 2, err
    records = [json.loads(ln) for ln in out.splitlines()]
    assert len(records) == 31
    assert sorted(r["status"] for r in records) == ["exists"] * 30 + ["failed"]
    assert {r["input"] for r in records if r["status"] == "exists"} == set(refs)
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--json", "--json-lines",
                       refs[0], env=env)
    assert code == 2 and "only one of" in err


def _lines_until(proc: subprocess.Popen[bytes], n: int, timeout: float) -> list[bytes]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    return lines


def test_interrupted_run_leaves_a_record(signer: GpgHome, tmp_path: Path) -> None:
    """SIGTERM after the first lines: every signature that reached the store has its line on stdout."""
    store = tmp_path / "store"
    lst = tmp_path / "refs.txt"
    lst.write_text("\n".join(ref(i) for i in range(1, 301)) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "atomicsig", "sign", "--key", signer.fingerprint,
                             "--sigstore", str(store), "--from-file", str(lst), "--signer", "gpg", "-j", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "GNUPGHOME": str(signer.path)})
    try:
        first = _lines_until(proc, 3, timeout=60)
        assert len(first) == 3, "no per-image line before the run ended"
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    lines = [ln.decode().rstrip("\n") for ln in first] + rest.decode().splitlines()
    reported = {ln.rsplit(" -> ", 1)[1] for ln in lines if ln.startswith("signed ")}
    stored = sigfiles(store)
    assert 3 <= len(stored) < 300, "the run was not interrupted mid-way"
    assert reported == stored


# ---- 4 and 7. --dry-run exit codes, keys resolved, typos --------------------------------------------------------

def test_sign_dry_run(cli, signer: GpgHome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"GNUPGHOME": str(signer.path)}
    store = tmp_path / "store"
    args = ("sign", "--key", signer.fingerprint, "--sigstore", str(store))
    code, out, err = cli(*args, "--dry-run", ref(1), ref(2), env=env)
    assert code == 1 and out.count("would-sign") == 2 and not sigfiles(store), err
    assert cli(*args, ref(1), env=env)[0] == 0
    code, out, _ = cli(*args, "--dry-run", "--json", ref(1), ref(2), env=env)
    doc = json.loads(out)
    assert code == 1 and [r["status"] for r in doc["results"]] == ["exists", "would-sign"]
    assert len(doc["would_sign"]) == 1
    code, out, err = cli(*args, "--dry-run", ref(1), env=env)
    assert code == 0 and "exists" in out, err
    code, out, err = cli(*args, "--dry-run", "--force", ref(1), env=env)
    assert code == 1, err
    code, out, err = cli("sign", "--key", "nobody@example.com", "--sigstore", str(store), "--dry-run", ref(3),
                         env=env)
    assert code == 2 and "no secret key matching 'nobody@example.com'" in err, err


def test_gnupghome_typo_refused(cli, signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    typo = tmp_path / "gnupg-typo"
    for args in (("sign", "--key", signer.fingerprint, "--sigstore", str(tmp_path / "s"), ref(1)),
                 ("verify", "--key", signer.fingerprint, "--sigstore", str(tmp_path / "s"), ref(1)),
                 ("keys", "list"), ("keys", "export", "--armor", signer.fingerprint),
                 ("keys", "retire", signer.fingerprint), ("keys", "delete", "--yes", signer.fingerprint),
                 ("keys", "rotate", "-f", str(tmp_path / "x.yaml"))):
        code, _, err = cli(*args, "--gnupghome", str(typo))
        assert code == 2 and f"GnuPG home {typo} does not exist" in err, (args, err)
        assert not typo.exists()
        code, _, err = cli(*args, env={"GNUPGHOME": str(typo)})
        assert code == 2 and str(typo) in err and not typo.exists(), (args, err)
    spec = tmp_path / "signers.yaml"
    spec.write_text("keys:\n  - name: New\n    email: new@example.com\n    expire: 1d\n")
    code, _, err = cli("keys", "generate", "-f", str(spec), "--gnupghome", str(typo))
    try:
        assert code == 0 and f"creating GnuPG home {typo}" in err and typo.is_dir(), err
    finally:
        subprocess.run(["gpgconf", "--homedir", str(typo), "--kill", "all"], capture_output=True, check=False)


def test_reference_without_host_warns(cli, signer: GpgHome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _out, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(tmp_path / "s"),
                         "team/app@sha256:" + "a" * 64, "quay.io/x/y@sha256:" + "b" * 64,
                         env={"GNUPGHOME": str(signer.path)})
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("atomicsig: warning:")]
    assert warnings == [f"atomicsig: warning: 'team/app@sha256:{'a' * 64}' names no registry host, so it means "
                        f"'docker.io/team/app@sha256:{'a' * 64}' on Docker Hub; write the host explicitly"]


# ---- 4 and 5. prune: --dry-run exit 1, --key FPR|EMAIL|FILE ----------------------------------------------------

def test_prune_key_forms_and_dry_run(cli, signer: GpgHome, other_signer: GpgHome, signer_pub: Path,  # type: ignore[no-untyped-def]
                                     tmp_path: Path) -> None:
    store = tmp_path / "store"
    for home in (signer, other_signer):
        code, _, err = cli("sign", "--key", home.fingerprint, "--sigstore", str(store), ref(1), ref(2),
                           env={"GNUPGHOME": str(home.path)})
        assert code == 0, err
    assert len(sigfiles(store)) == 4
    other_pub = other_signer.export_public(tmp_path / "other.asc", armor=True)
    # FILE (armored): dry run lists the two, exits 1, changes nothing
    code, out, err = cli("prune", "--sigstore", str(store), "--key", str(other_pub), "--dry-run")
    assert code == 1 and out.count("/signature-2\n") == 2 and len(sigfiles(store)) == 4, out + err
    # EMAIL from the keyring
    code, out, err = cli("prune", "--sigstore", str(store), "--key", "other@example.com", "--dry-run", "--json",
                         "--gnupghome", str(other_signer.path))
    assert code == 1 and len(json.loads(out)["removed"]) == 2, err
    # A file with two keys is refused: pruning both could remove signatures that must keep verifying
    both = tmp_path / "both.gpg"
    both.write_bytes(signer_pub.read_bytes() + other_signer.export_public(tmp_path / "other.gpg").read_bytes())
    code, _, err = cli("prune", "--sigstore", str(store), "--key", str(both))
    assert code == 2 and "names 2 keys" in err and len(sigfiles(store)) == 4
    code, _, err = cli("prune", "--sigstore", str(store), "--key", str(tmp_path / "missing.gpg"))
    assert code == 2 and "does not exist" in err
    code, out, err = cli("prune", "--sigstore", str(store), "--key", str(other_pub))
    assert code == 0 and len(sigfiles(store)) == 2, out + err
    code, out, _ = cli("prune", "--sigstore", str(store), "--key", other_signer.fingerprint, "--dry-run")
    assert code == 0 and "would remove 0 signatures" in out


# ---- 6. --json on keys retire / delete ---------------------------------------------------------------------------

def test_keys_retire_delete_json(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "gnupg"
    spec = tmp_path / "signers.yaml"
    spec.write_text("keys:\n  - {name: A, email: a@example.com, expire: 0}\n"
                    "  - {name: B, email: b@example.com, expire: 0}\n")
    try:
        code, out, err = cli("keys", "generate", "-f", str(spec), "--gnupghome", str(home), "--json")
        assert code == 0, err
        fa, fb = (k["fingerprint"] for k in json.loads(out)["keys"])
        code, out, err = cli("keys", "retire", "a@example.com", "--gnupghome", str(home), "--json")
        assert code == 0, err
        doc = json.loads(out)["keys"]
        assert doc[0]["fingerprint"] == fa and doc[0]["action"] == "expires"
        assert 0 < doc[0]["expires"] - time.time() <= 2 * 86400
        cert = tmp_path / "rev.asc"
        code, out, err = cli("keys", "retire", "--revoke", "b@example.com", "-o", str(cert), "--gnupghome",
                             str(home), "--json")
        assert code == 0, err
        assert json.loads(out)["keys"] == [{"fingerprint": fb, "action": "revoked", "expires": None,
                                            "revocation_certificate": str(cert)}]
        code, out, err = cli("keys", "delete", "--yes", fa, fb, "--gnupghome", str(home), "--json")
        assert code == 0 and json.loads(out) == {"deleted": [fa, fb]}, err
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


# ---- 8. refused uploads to atomicsig serve -----------------------------------------------------------------------

def test_refused_upload_says_why_and_exits_2(cli, signer: GpgHome, other_signer: GpgHome, signer_pub: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    root = tmp_path / "served"
    root.mkdir()
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    bad_tok = tmp_path / "bad-token"
    bad_tok.write_text("not-the-token-" + "x" * 20 + "\n")
    with serve_sigstore(root, "--token-file", str(tok), "--trusted-key", str(signer_pub)) as base:
        def sign(home: GpgHome, token: Path) -> tuple[int, str, str]:
            return cli("sign", "--key", home.fingerprint, "--sigstore", base, "--sigstore-token-file", str(token),
                       ref(1), env={"GNUPGHOME": str(home.path)})  # type: ignore[no-any-return]
        code, _, err = sign(signer, bad_tok)
        assert code == 2 and "HTTP 401" in err and "token is missing or wrong" in err, err
        code, _, err = sign(other_signer, tok)
        assert code == 2 and "HTTP 403" in err and "refused the signer as untrusted" in err, err
        assert not sigfiles(root)
        code, _, err = sign(signer, tok)
        assert code == 0 and len(sigfiles(root)) == 1, err
    # The server is gone: a connection error stays "could not decide"
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", base, "--sigstore-token-file", str(tok),
                       ref(2), env={"GNUPGHOME": str(signer.path)})
    assert code == 3, err


# ---- 3. a manifest list signed without --all --------------------------------------------------------------------

def test_manifest_list_without_all_warns(cli, signer: GpgHome, registry: Registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    instances = list(push_index(registry.host, "multi/app:1", tmp_path)[1].values())
    image = f"{registry.host}/multi/app:1"
    env = {"GNUPGHOME": str(signer.path)}
    args = ("sign", "--key", signer.fingerprint, "--sigstore", str(tmp_path / "s"), "--tls-verify=false")
    code, out, err = cli(*args, "--dry-run", image, env=env)
    assert code == 1 and "is a manifest list (2 instances: linux/amd64, linux/arm64)" in err and "--all" in err
    assert out.count("would-sign") == 1  # without --all only the list itself, as before
    code, out, err = cli(*args, image, env=env)
    assert code == 0 and err.count("will refuse the image unless the instances are signed") == 1, err
    assert len(out.splitlines()) == 1
    code, out, err = cli(*args, "--all", image, env=env)
    assert code == 0 and "manifest list" not in err, err
    assert all(d in out for d in instances)
    # A single-platform image gets no warning
    code, out, err = cli(*args, f"{registry.host}/multi/app:1@{instances[0]}", env=env)
    assert code == 0 and "warning" not in err


# ---- 9. policy apply --root prints the real paths ----------------------------------------------------------------

def test_policy_apply_root_prints_paths_under_root(cli, signer: GpgHome, signer_pub: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    yml = tmp_path / "p.yaml"
    yml.write_text(f"default: reject\nkeys:\n  prod: {{file: {signer_pub}}}\n"
                   "scopes:\n  registry.example.com/prod:\n    signed-by: [prod]\n"
                   "    lookaside: https://sigs.example.com/sigs\n")
    base = ("policy", "apply", "-f", str(yml), "--root", str(root), "--gnupghome", str(signer.path))
    code, out, err = cli(*base, "--check")
    assert code == 1, err
    assert f"{root}/etc/containers/policy.json" in out and not any(
        ln.split()[-1].startswith("/etc/") for ln in out.splitlines())
    code, out, err = cli(*base, "--json")
    assert code == 0, err
    changes = json.loads(out)["changes"]
    pol = next(c for c in changes if c["path"] == "/etc/containers/policy.json")
    assert pol["file"] == f"{root}/etc/containers/policy.json" and Path(pol["file"]).is_file()


# ---- 6. demo --json --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_json() -> None:
    res = subprocess.run([sys.executable, "-m", "atomicsig", "demo", "--json"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and len(doc["key"]) == 40 and doc["signed"][0]["status"] == "signed"
    assert [(p["accepted"], p["expected"]) for p in doc["pulls"]] == [(True, True), (False, False)]


# ---- 10. shell completion (documented in README) -----------------------------------------------------------------

def test_shell_completion_through_run_main() -> None:
    env = {**os.environ, "_ATOMICSIG_COMPLETE": "bash_source"}
    res = subprocess.run([sys.executable, "-m", "atomicsig"], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert res.returncode == 0 and "_atomicsig_completion()" in res.stdout, res.stderr
    env = {**os.environ, "_ATOMICSIG_COMPLETE": "bash_complete", "COMP_WORDS": "atomicsig sign --json",
           "COMP_CWORD": "2"}
    res = subprocess.run([sys.executable, "-m", "atomicsig"], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert res.returncode == 0 and "plain,--json-lines" in res.stdout.splitlines(), res.stdout + res.stderr
