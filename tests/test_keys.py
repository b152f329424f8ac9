"""``atomicsig keys``: batch generation, listing, export/import, delete, retire; passphrases never in argv."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

SECRET_FILE_PW = "file-pass-Zq81"
SECRET_ENV_PW = "env-pass-Hk27"


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Three keys from one signers file, generated through a gpg wrapper that logs its argv."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main
    from tests.infra import cli_runner

    d = tmp_path_factory.mktemp("keys")
    home = d / "gnupg"
    log = d / "argv.log"
    wrapper = d / "gpg-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec gpg "$@"\n')
    wrapper.chmod(0o755)
    pwfile = d / "pw"
    pwfile.write_text(SECRET_FILE_PW + "\n")
    signers = d / "signers.yaml"
    signers.write_text(f"""keys:
  - name: Release RSA
    email: rsa@example.com
    algorithm: rsa2048
    expire: 0
    passphrase-file: {pwfile}
  - name: Release Ed
    email: ed@example.com
    comment: production
    algorithm: ed25519
    passphrase-env: ATOMICSIG_TEST_PW
  - name: CI
    email: ci@example.com
""")
    env = {"ATOMICSIG_GPG": str(wrapper), "ATOMICSIG_TEST_PW": SECRET_ENV_PW, "GNUPGHOME": str(home)}

    def run(*args: str, input: str | bytes | None = None):  # type: ignore[no-untyped-def]
        with cli_runner().isolation(input=input, env=env) as (out, err, *_):
            code = run_main(group, list(args))
            return code, out.getvalue(), err.getvalue().decode()

    code, out, err = run("keys", "generate", "-f", str(signers), "--json")
    assert code == 0, err
    yield {"run": run, "home": home, "log": log, "dir": d, "pwfile": pwfile, "signers": signers,
           "generated": json.loads(out)["keys"], "outputs": [out.decode(), err]}
    kill_agent(home)


def test_generate_created_and_idempotent(batch) -> None:  # type: ignore[no-untyped-def]
    gen = batch["generated"]
    assert [(k["email"], k["status"], k["algorithm"]) for k in gen] == [
        ("rsa@example.com", "created", "rsa2048"), ("ed@example.com", "created", "ed25519"),
        ("ci@example.com", "created", "ed25519")]
    assert len({k["fingerprint"] for k in gen}) == 3
    code, out, err = batch["run"]("keys", "generate", "-f", str(batch["signers"]), "--json")
    assert code == 0, err
    again = json.loads(out)["keys"]
    assert [k["status"] for k in again] == ["exists"] * 3
    assert [k["fingerprint"] for k in again] == [k["fingerprint"] for k in gen]
    code, out, _ = batch["run"]("keys", "list", "--json")
    assert len(json.loads(out)["keys"]) == 3


def test_list_json_fields(batch) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = batch["run"]("keys", "list", "--secret", "--json")
    assert code == 0
    keys = {k["uids"][0]: k for k in json.loads(out)["keys"]}
    ed = keys["Release Ed (production) <ed@example.com>"]
    assert set(ed) >= {"fingerprint", "keyid", "uids", "algorithm", "created", "expires", "revoked", "expired",
                       "secret", "subkeys"}
    assert len(ed["fingerprint"]) == 40 and ed["keyid"] == ed["fingerprint"][-16:]
    assert ed["secret"] is True and ed["revoked"] is False and ed["expires"]  # default 2y
    assert keys["Release RSA <rsa@example.com>"]["expires"] is None  # expire: 0


def test_passphrase_never_in_argv_or_output(batch) -> None:  # type: ignore[no-untyped-def]
    run = batch["run"]
    # Use both protected keys: sign (needs the passphrase) and export the secret part.
    code, _, err = run("sign", "--key", "ed@example.com", "--passphrase-env", "ATOMICSIG_TEST_PW",
                       "--sigstore", str(batch["dir"] / "store"), "quay.io/ns/app@sha256:" + "e" * 64)
    assert code == 0, err
    out_file = batch["dir"] / "rsa-secret.gpg"
    code, _, err = run("keys", "export", "--secret", "rsa@example.com", "--passphrase-file", str(batch["pwfile"]),
                       "-o", str(out_file))
    assert code == 0, err
    argv = batch["log"].read_text()
    assert "--passphrase-fd" in argv
    texts = [argv, *batch["outputs"], err]
    for secret in (SECRET_FILE_PW, SECRET_ENV_PW):
        assert all(secret not in t for t in texts)


def test_export_formats_and_import(batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = batch["run"]
    code, out, _ = run("keys", "export", "ci@example.com")
    assert code == 0 and out[:1] in (b"\x98", b"\x99", b"\xc6")  # binary public key packet
    code, out, _ = run("keys", "export", "--armor", "ci@example.com")
    assert out.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    sec = tmp_path / "ci-secret.gpg"
    code, _, err = run("keys", "export", "--secret", "ci@example.com", "-o", str(sec))
    assert code == 0, err
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600 and sec.read_bytes()[:1] in (b"\x95", b"\x94", b"\xc5")
    pub = tmp_path / "ci.gpg"
    code, _, _ = run("keys", "export", "ci@example.com", "-o", str(pub))
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    # Import into a fresh home.
    fresh = tmp_path / "fresh"
    code, out, err = run("keys", "import", str(sec), "--gnupghome", str(fresh), "--json")
    assert code == 0, err
    fpr = next(k["fingerprint"] for k in batch["generated"] if k["email"] == "ci@example.com")
    assert json.loads(out)["imported"] == [fpr]
    code, out, _ = run("keys", "list", "--secret", "--json", "--gnupghome", str(fresh))
    assert [k["fingerprint"] for k in json.loads(out)["keys"]] == [fpr]
    # delete needs a full fingerprint and --yes off a terminal
    assert run("keys", "delete", "ci@example.com", "--gnupghome", str(fresh))[0] == 2
    assert run("keys", "delete", fpr, "--gnupghome", str(fresh))[0] == 2
    code, _, err = run("keys", "delete", fpr, "--yes", "--gnupghome", str(fresh))
    assert code == 0, err
    code, out, _ = run("keys", "list", "--json", "--gnupghome", str(fresh))
    assert json.loads(out)["keys"] == []
    kill_agent(fresh)
    # importing garbage is an input error
    bad = tmp_path / "bad"
    bad.write_bytes(b"nope")
    code, _, err = run("keys", "import", str(bad), "--gnupghome", str(fresh))
    assert code == 2 and err.count("\n") == 1


def test_retire_sets_expiry_and_revoke(batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = batch["run"]
    code, _, err = run("keys", "retire", "rsa@example.com", "--passphrase-file", str(batch["pwfile"]))
    assert code == 0, err
    code, out, _ = run("keys", "list", "--json")
    rsa = next(k for k in json.loads(out)["keys"] if "rsa@example.com" in k["uids"][0])
    assert rsa["expires"] is not None and not rsa["revoked"]
    cert = tmp_path / "rev.asc"
    code, _, err = run("keys", "retire", "--revoke", "ci@example.com", "-o", str(cert))
    assert code == 0, err
    assert b"BEGIN PGP PUBLIC KEY BLOCK" in cert.read_bytes()
    code, out, _ = run("keys", "list", "--json")
    ci = next(k for k in json.loads(out)["keys"] if "ci@example.com" in k["uids"][0])
    assert ci["revoked"] is True
    # A revoked key is no longer usable for signing.
    code, _, err = run("sign", "--key", "ci@example.com", "--sigstore", str(tmp_path / "s"),
                       "quay.io/a@sha256:" + "e" * 64)
    assert code == 2 and "revoked" in err


def test_generate_input_errors(batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = batch["run"]
    cases = {
        "keys: [{name: a}]": "'email'",
        "keys: [{name: a, email: a@b.c, algorithm: dsa}]": "algorithm",
        "keys: [{name: a, email: a@b.c, bogus: 1}]": "unknown field",
        "keys: [{name: a, email: a@b.c}, {name: b, email: A@b.c}]": "twice",
        "keys: [{name: a, email: a@b.c, passphrase-env: NOT_SET_ANYWHERE}]": "not set",
        "other: 1": "unknown top-level",
        "[": "invalid YAML",
    }
    before = run("keys", "list", "--json")[1]
    for text, reason in cases.items():
        f = tmp_path / "s.yaml"
        f.write_text(text)
        code, _, err = run("keys", "generate", "-f", str(f))
        assert code == 2, (text, err)
        assert reason in err and err.count("\n") == 1, (text, err)
    assert run("keys", "list", "--json")[1] == before  # nothing generated


def test_wrong_passphrase(batch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kill_agent(batch["home"])  # make sure no cached passphrase answers for us
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase\n")
    store = tmp_path / "store"
    code, _, err = batch["run"]("sign", "--key", "ed@example.com", "--passphrase-file", str(wrong),
                                "--sigstore", str(store), "quay.io/ns/app@sha256:" + "f" * 64)
    assert code == 2, err
    assert "passphrase" in err
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))
    # And without any passphrase for a protected key.
    kill_agent(batch["home"])
    code, _, err = batch["run"]("sign", "--key", "ed@example.com", "--sigstore", str(store),
                                "quay.io/ns/app@sha256:" + "f" * 64)
    assert code == 2 and "passphrase" in err, err
    assert os.environ.get("ATOMICSIG_TEST_PW") is None  # the test env did not leak into the process


def test_rotate_overlap_export_and_sign_with_new_key(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A rotation makes a new key, lets the old one expire after the overlap, and is harmless to re-run."""
    import time

    from atomicsig import manifest, openpgp

    home = tmp_path / "gnupg"
    pw = tmp_path / "pw"
    pw.write_text(SECRET_FILE_PW + "\n")
    signers = tmp_path / "signers.yaml"
    signers.write_text(f"""keys:
  - {{name: Release, email: rel@example.com, algorithm: ed25519, expire: 0, passphrase-file: {pw}}}
  - {{name: CI, email: ci@example.com, algorithm: rsa2048}}
""")
    base = ("--gnupghome", str(home))
    try:
        code, out, err = cli("keys", "generate", "-f", str(signers), "--json", *base)
        assert code == 0, err
        before = {k["email"]: k["fingerprint"] for k in json.loads(out)["keys"]}

        code, out, err = cli("keys", "rotate", "-f", str(signers), "--min-age", "0", "--dry-run", "--json", *base)
        assert code == 1, err  # a rotation is due: "changes pending"
        assert {k["status"] for k in json.loads(out)["keys"]} == {"planned"}

        code, out, err = cli("keys", "rotate", "-f", str(signers), "--min-age", "0", "--overlap", "30d",
                             "--export-dir", str(tmp_path / "pub"), "--json", *base)
        assert code == 0, err
        rotated = {k["email"]: k for k in json.loads(out)["keys"]}
        for email, k in rotated.items():
            assert k["status"] == "rotated" and k["old"] == before[email] and k["new"] != before[email]
            assert abs(k["old_expires"] - (time.time() + 30 * 86400)) < 2 * 86400
            # The export holds both keys: the policy's "any of these keys" file for the overlap.
            code, out, err = cli("keys", "import", str(tmp_path / "pub" / f"{email}.gpg"), "--json",
                                 "--gnupghome", str(tmp_path / f"check-{email}"))
            assert code == 0, err
            assert (tmp_path / "pub" / f"{email}.gpg").stat().st_mode & 0o777 == 0o644
        code, out, _ = cli("keys", "list", "--json", *base)
        assert len(json.loads(out)["keys"]) == 4

        # The e-mail now names the new key (the old one expires first), so signing uses it.
        doc = b'{"schemaVersion":2,"config":{"digest":"sha256:' + b"1" * 64 + b'"},"layers":[]}'
        (tmp_path / "m.json").write_bytes(doc)
        store = tmp_path / "sigstore"
        code, out, err = cli("sign", "--key", "rel@example.com", "--passphrase-file", str(pw), "--manifest",
                             str(tmp_path / "m.json"), "--sigstore", str(store), "example.com/rot/app:1", *base)
        assert code == 0, err
        (sig,) = store.rglob("signature-1")
        assert rotated["rel@example.com"]["new"].endswith(openpgp.untrusted_signer(sig.read_bytes()) or "?")
        assert manifest.digest(doc)[7:] in str(sig)

        code, out, err = cli("keys", "rotate", "-f", str(signers), "--json", *base)  # default --min-age 1d
        assert code == 0, err
        assert {k["status"] for k in json.loads(out)["keys"]} == {"recent"}
        code, out, _ = cli("keys", "list", "--json", *base)
        assert len(json.loads(out)["keys"]) == 4
        code, _, err = cli("keys", "rotate", "-f", str(signers), "--overlap", "0", *base)
        assert code == 2 and "--overlap" in err
    finally:
        kill_agent(home)
