"""``atomicsig keys``: batch generation, listing, export/import, delete, retire; passphrases never in argv."""

from __future__ import annotations

import json
import os
import re
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

    from atomicsig.format import manifest
    from atomicsig.openpgp import packets as openpgp

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


# ---- passphrases exactly as configured (issue 12 #12) ---------------------------------------------------------


def test_passphrase_with_spaces_protects_the_key_with_exactly_that(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """gpg's batch parameter parser trims a ``Passphrase:`` value; generation must not, or the key ends up
    protected by another passphrase than the file says."""
    home = tmp_path / "gnupg"
    spaced = "  two words  "
    pw = tmp_path / "pw"
    pw.write_text(spaced + "\n")
    trimmed = tmp_path / "trimmed"
    trimmed.write_text(spaced.strip() + "\n")
    signers = tmp_path / "signers.yaml"
    signers.write_text(f"keys:\n  - {{name: Spaced, email: sp@example.com, passphrase-file: {pw}}}\n")
    man = tmp_path / "m.json"
    man.write_text('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}')
    try:
        code, _, err = cli("keys", "generate", "-f", str(signers), "--gnupghome", str(home))
        assert code == 0, err
        for n, (source, want) in enumerate([(trimmed, 2), (pw, 0)]):
            kill_agent(home)  # nothing cached: the key's own protection decides
            code, _, err = cli("sign", "--key", "sp@example.com", "--passphrase-file", str(source), "--gnupghome",
                               str(home), "--sigstore", str(tmp_path / "s"), "--manifest", str(man),
                               f"example.com/sp/app:{n}")
            assert code == want, err
            assert spaced.strip() not in err
    finally:
        kill_agent(home)


def _read(source) -> str | None:  # type: ignore[no-untyped-def]
    from atomicsig.gnupg.passphrase import PassphraseSource

    assert isinstance(source, PassphraseSource)
    return source.read()


def test_passphrase_file_first_line_rules(tmp_path: Path) -> None:
    from atomicsig.errors import PassphraseError
    from atomicsig.gnupg.passphrase import PassphraseSource

    f = tmp_path / "p"
    ok = {b"pw\n": "pw", b"pw\r\n": "pw", b"pw": "pw", b"  pw  \nsecond line\n": "  pw  ",
          "pässwörd\n".encode(): "pässwörd"}
    for raw, want in ok.items():
        f.write_bytes(raw)
        assert _read(PassphraseSource(file=str(f))) == want, raw
    link = tmp_path / "link"  # Kubernetes mounts Secrets as symlinks to regular files
    link.symlink_to(f)
    assert _read(PassphraseSource(file=str(link))) == "pässwörd"
    bad = {b"\n": "empty", b"\r\n": "empty", b"p\x00w\n": "NUL", b"p\rw\n": "carriage return",
           b"pw\r\r\n": "carriage return", b"\xff\xfe\n": "not UTF-8",
           b"x" * (64 * 1024 + 1): "longer than"}
    for raw, reason in bad.items():
        f.write_bytes(raw)
        with pytest.raises(PassphraseError, match=reason):
            _read(PassphraseSource(file=str(f)))
    # A first line within the bound is enough, however large the rest of the file is.
    f.write_bytes(b"pw\n" + b"x" * (1024 * 1024))
    assert _read(PassphraseSource(file=str(f))) == "pw"


def test_passphrase_sources_that_are_not_regular_files_are_refused_without_reading(tmp_path: Path) -> None:
    """A FIFO nobody writes would hang the run, /dev/zero would fill memory: both refused at once (exit 2)."""
    import threading

    from atomicsig.errors import PassphraseError
    from atomicsig.gnupg.passphrase import PassphraseSource

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {str(fifo): "FIFO", "/dev/zero": "device", str(tmp_path): "directory"}
    for path, kind in cases.items():
        result: dict[str, object] = {}

        def read(p: str = path) -> None:
            try:
                result["value"] = _read(PassphraseSource(file=p))
            except PassphraseError as exc:
                result["error"] = str(exc)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(10)
        if t.is_alive() and path == str(fifo):
            with open(fifo, "wb"):  # release the reader the old code left blocked
                pass
        assert not t.is_alive(), f"reading {path} blocked"
        assert kind in str(result.get("error")), (path, result)


def test_passphrase_stdin_is_bounded(signer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--passphrase-stdin`` with an endless stream (here /dev/zero) stops at 64 KiB with exit 2."""
    import sys

    man = tmp_path / "m.json"
    man.write_text('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}')
    with open("/dev/zero", "rb") as zero:
        proc = subprocess.run([sys.executable, "-m", "atomicsig", "sign", "--key", signer.fingerprint,
                               "--gnupghome", str(signer.path), "--passphrase-stdin", "--manifest", str(man),
                               "--sigstore", str(tmp_path / "s"), "example.com/zero/app:1"],
                              stdin=zero, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "longer than 65536 bytes" in proc.stderr, proc.stderr


# ---- signer fields that round-trip (issue 12 #12, #13) ----------------------------------------------------------


@pytest.mark.parametrize(("entry", "reason"), [
    ("{name: 'Na<me', email: a@example.com}", "name must not contain '<'"),
    ("{name: 'Na>me', email: a@example.com}", "name must not contain '>'"),
    ("{name: 'Acme (EU)', email: a@example.com}", "name must not contain '('"),
    ("{name: N, email: a@example.com, comment: 'com)ment'}", "comment must not contain ')'"),
    ("{name: N, email: a@example.com, comment: '<x>'}", "comment must not contain '<'"),
    ("{name: '  lead', email: a@example.com}", "begins or ends with whitespace"),
    ("{name: 'trail ', email: a@example.com}", "begins or ends with whitespace"),
    ("{name: N, email: a@example.com, comment: ' spaced '}", "begins or ends with whitespace"),
    ('{name: "Tab\\there", email: a@example.com}', "U+0009"),
    ('{name: "Bell\\a", email: a@example.com}', "U+0007"),
    ('{name: "Del\\x7f", email: a@example.com}', "U+007F"),
    ('{name: "C1\\x85in", email: a@example.com}', "U+0085"),
    ('{name: "evil\\u202egnp.exe", email: a@example.com}', "U+202E"),
    ('{name: N, email: a@example.com, comment: "line\\u2028sep"}', "U+2028"),
    ("{name: " + "x" * 129 + ", email: a@example.com}", "at most 128"),
    ("{name: N, email: a@example.com, comment: " + "c" * 129 + "}", "at most 128"),
    ("{name: N, email: " + "e" * 250 + "@example.com}", "at most 254"),
    ("{name: N, email: 'a(b@example.com'}", "e-mail address"),
    ("{name: N, email: 'a b@example.com'}", "e-mail address"),
    ('{name: N, email: "a\\x01b@example.com"}', "U+0001"),
    ("{name: N, email: a@example.com, passphrase-file: 3}", "'passphrase-file' must be a non-empty string"),
    ("{name: N, email: a@example.com, comment: [x]}", "'comment' must be text"),
])
def test_signer_fields_gpg_would_change_are_refused(entry: str, reason: str) -> None:
    from atomicsig.errors import InputError
    from atomicsig.ops import keys

    with pytest.raises(InputError, match=re.escape(reason)) as info:
        keys.load_specs(f"keys:\n  - {entry}\n", "signers.yaml")
    assert str(info.value).startswith("signers.yaml:2: ")


def test_edge_values_that_are_allowed_round_trip_and_generate_once(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "gnupg"
    signers = tmp_path / "signers.yaml"
    entries = [
        ("Release: prod #1 100%", "colon@example.com", "team: a, b & c"),
        ("Ünïcødé Ñame — ☃", "unicode@example.com", "ütf-8 ✓"),
        ("O'Brien-Smith, Jr.", "Mixed.Case+tag@Example.COM", None),
        ("x" * 128, "long@example.com", "c" * 128),
        ("1 starts with a digit", "digit@example.com", "2024"),
    ]
    lines = ["keys:"]
    for name, email, comment in entries:
        lines.append(f"  - name: {json.dumps(name)}\n    email: {json.dumps(email)}\n    algorithm: ed25519")
        if comment is not None:
            lines.append(f"    comment: {json.dumps(comment)}")
    signers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        code, out, err = cli("keys", "generate", "-f", str(signers), "--json", "--gnupghome", str(home))
        assert code == 0, err
        first = json.loads(out)["keys"]
        assert [k["status"] for k in first] == ["created"] * len(entries)
        for k, (name, email, comment) in zip(first, entries, strict=True):
            assert k["uids"] == [f"{name}{f' ({comment})' if comment else ''} <{email}>"]
        code, out, err = cli("keys", "generate", "-f", str(signers), "--json", "--gnupghome", str(home))
        assert code == 0, err
        again = json.loads(out)["keys"]
        assert [k["status"] for k in again] == ["exists"] * len(entries)
        assert [k["fingerprint"] for k in again] == [k["fingerprint"] for k in first]
        code, out, _ = cli("keys", "list", "--json", "--gnupghome", str(home))
        assert len(json.loads(out)["keys"]) == len(entries)
    finally:
        kill_agent(home)


def test_key_with_angle_bracket_in_name_is_found_by_email(tmp_path: Path) -> None:
    """Keys made by other tools may have '<' in the name: the e-mail is the last <…> of the user ID."""
    from atomicsig.gnupg.keyring import Keyring
    from atomicsig.ops import keys

    home = tmp_path / "gnupg"
    kr = Keyring(str(home))
    try:
        made = kr.generate(name="Odd <Name", email="odd@example.com", comment=None, algorithm="ed25519",
                           expire="0", passphrase=None)
        assert kr.resolve("odd@example.com", secret=True).fingerprint == made.fingerprint
        current = keys.current_key(kr, "odd@example.com")
        assert current is not None and current.fingerprint == made.fingerprint
    finally:
        kill_agent(home)


def test_key_commands_check_a_given_passphrase_despite_the_cache(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """export --secret / retire / delete with a wrong passphrase after the right one was cached: exit 2."""
    home = tmp_path / "gnupg"
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(SECRET_FILE_PW + "\n")
    wrong.write_text("not-" + SECRET_FILE_PW + "\n")
    signers = tmp_path / "signers.yaml"
    signers.write_text(f"keys:\n  - {{name: K, email: k@example.com, passphrase-file: {right}}}\n")
    base = ("--gnupghome", str(home))
    try:
        code, out, err = cli("keys", "generate", "-f", str(signers), "--json", *base)
        assert code == 0, err
        fpr = json.loads(out)["keys"][0]["fingerprint"]
        code, _, err = cli("keys", "export", "--secret", fpr, "--passphrase-file", str(right), "-o",
                           str(tmp_path / "k.sec"), *base)
        assert code == 0, err  # the agent now caches the passphrase
        for args in (("keys", "export", "--secret", fpr, "-o", str(tmp_path / "k2.sec")),
                     ("keys", "retire", fpr), ("keys", "delete", fpr, "--yes")):
            code, _, err = cli(*args, "--passphrase-file", str(wrong), *base)
            assert code == 2 and "wrong passphrase" in err, (args, err)
        code, out, _ = cli("keys", "list", "--json", *base)
        (key,) = json.loads(out)["keys"]
        assert key["expires"] and not key["revoked"]  # not retired: generated with 2y, untouched
        assert not (tmp_path / "k2.sec").exists()
    finally:
        kill_agent(home)


@pytest.mark.skipif(os.path.isdir(f"/run/user/{os.getuid()}"), reason="gpg-agent puts its sockets in /run/user")
def test_a_home_too_deep_for_the_agent_socket_is_a_clear_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """gpg's own answer is "No agent running"; the user gets told why and what to do (exit 2, one line)."""
    home = tmp_path / ("d" * 60) / ("e" * 60)
    home.mkdir(parents=True, mode=0o700)
    signers = tmp_path / "s.yaml"
    signers.write_text("keys: [{name: A, email: a@example.com}]\n")
    code, _, err = cli("keys", "generate", "-f", str(signers), "--gnupghome", str(home))
    assert code == 2 and "too deep for gpg-agent" in err and "shorter GNUPGHOME" in err, err
    assert err.count("\n") == 1
