"""OpenPGP v6 keys through the whole key lifecycle (issue 16, this round): ``keys import``, ``rotate``, ``retire``
and ``delete`` on a Sequoia home, the gpg verifier (``ATOMICSIG_VERIFIER=gpg``) facing v6 keys and signatures,
and fingerprints of the wrong length wherever a keys command takes one.

Keys are made by the real CLI (Sequoia underneath) or by pysequoia directly (an independent maker for imports);
signatures by ``atomicsig sign``; verdicts by ``atomicsig verify`` and by pysequoia itself; the v4 side by gpg.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pysequoia
import pytest
from pysequoia import Profile, Tsk

from atomicsig.openpgp import sequoia, sqgen
from tests.test_nativeverify import gen_key, gpg
from tests.test_secrets import PASS, WRONG, run_watched

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example.com/app@{DIGEST}"

SIGNERS = """keys:
  - name: Modern
    email: modern@example.com
    profile: rfc9580
    algorithm: ed25519
    passphrase-env: ATOMICSIG_V6_PW
  - name: Quantum
    email: pq@example.com
    profile: rfc9580
    algorithm: mldsa65-ed25519
    passphrase-env: ATOMICSIG_V6_PW
"""


def _atomicsig(*args: str, env: dict[str, str] | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
    """The CLI in a child process (as a node runs it), with the test's environment plus ``env``."""
    proc = subprocess.run([sys.executable, "-m", "atomicsig", *args], input=stdin, capture_output=True,
                          timeout=120, env={**os.environ, "RUST_BACKTRACE": "0", **(env or {})})
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _generate(d: Path, sq: Path, signers: str = SIGNERS) -> dict[str, str]:
    (d / "signers.yaml").write_text(signers)
    code, out, err = _atomicsig("keys", "generate", "-f", str(d / "signers.yaml"), "--sequoia-home", str(sq),
                                "--json", env={"ATOMICSIG_V6_PW": PASS})
    assert code == 0, err
    return {k["email"]: k["fingerprint"] for k in json.loads(out)["keys"]}


def _cert_file(sq: Path, fpr: str) -> Path:
    return sq / "data" / "pgp.cert.d" / fpr[:2].lower() / fpr[2:].lower()


def _softkey(sq: Path, fpr: str) -> Path:
    return sq / "data" / "keystore" / "softkeys" / f"{fpr}.pgp"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sign(sq: Path, email: str, store: Path, pw: Path, *extra: str) -> None:
    code, _, err = _atomicsig("sign", "--key", email, "--sequoia-home", str(sq), "--sigstore", str(store),
                              "--passphrase-file", str(pw), *extra, IMAGE)
    assert code == 0, err


def _verify(store: Path, *keys: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    args = ["verify", "--sigstore", str(store), "--json"]
    for k in keys:
        args += ["--key", k]
    code, out, err = _atomicsig(*args, IMAGE, env=env)
    if not out:
        return code, {"stderr": err}
    return code, json.loads(out)["images"][0]


@pytest.fixture
def pwfiles(tmp_path: Path) -> tuple[Path, Path]:
    good, wrong = tmp_path / "pw", tmp_path / "wrong"
    good.write_text(PASS + "\n")
    wrong.write_text(WRONG + "\n")
    return good, wrong


# ---- keys import into a Sequoia home --------------------------------------------------------------------------


def test_import_certificates_and_secret_keys_into_a_sequoia_home(tmp_path: Path) -> None:
    """v4 and v6 certificates (binary and armored) land in pgp.cert.d, a protected v6 secret key in the soft-key
    store still protected (0600 in 0700 directories); Sequoia reads every file back; a second import changes
    no byte and says "unchanged"."""
    v6 = Tsk.generate("Six <six@example.com>", profile=Profile.RFC9580)
    v4 = Tsk.generate("Four <four@example.com>", profile=Profile.RFC4880)
    pq = Tsk.generate("Pq <pq@example.com>", profile=Profile.RFC9580,
                      cipher_suite=pysequoia.CipherSuite.MLDSA65_Ed25519)
    (tmp_path / "v6.asc").write_text(str(v6.extract_certificate()))
    (tmp_path / "v4.pgp").write_bytes(bytes(v4.extract_certificate()))
    (tmp_path / "pq.key").write_bytes(sqgen.protect(bytes(pq), PASS))
    sq = tmp_path / "sq"
    files = [str(tmp_path / n) for n in ("v6.asc", "v4.pgp", "pq.key")]
    code, out, err = _atomicsig("keys", "import", "--keystore", "sequoia", "--sequoia-home", str(sq), "--json",
                                *files)
    assert code == 0, err
    got = {k["fingerprint"]: (k["status"], k["version"], k["secret"]) for k in json.loads(out)["keys"]}
    fprs = {n: k.extract_certificate().fingerprint.upper() for n, k in (("v6", v6), ("v4", v4), ("pq", pq))}
    assert got == {fprs["v6"]: ("imported", 6, False), fprs["v4"]: ("imported", 4, False),
                   fprs["pq"]: ("imported", 6, True)}
    for fpr in fprs.values():
        cert = _cert_file(sq, fpr)
        assert pysequoia.Cert.from_bytes(cert.read_bytes()).fingerprint.upper() == fpr
        assert not sequoia.read_certs(cert.read_bytes())[0].secret
    secret = _softkey(sq, fprs["pq"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    with pytest.raises(Exception):  # still protected: pysequoia raises a plain exception without the passphrase
        Tsk.from_bytes(secret.read_bytes()).signer()
    Tsk.from_bytes(secret.read_bytes()).signer(PASS)
    before = _snapshot(sq)
    code, out, err = _atomicsig("keys", "import", "--keystore", "sequoia", "--sequoia-home", str(sq), "--json",
                                *files)
    assert code == 0, err
    assert {k["status"] for k in json.loads(out)["keys"]} == {"unchanged"}
    assert json.loads(out)["imported"] == []
    assert _snapshot(sq) == before
    # Importing the same key unprotected does not strip the passphrase of the stored copy.
    (tmp_path / "pq-clear.key").write_bytes(bytes(pq))
    code, out, err = _atomicsig("keys", "import", "--sequoia-home", str(sq), str(tmp_path / "pq-clear.key"))
    assert code == 0, err
    assert out.strip() == f"unchanged {fprs['pq']} (Sequoia home)"
    with pytest.raises(Exception):
        Tsk.from_bytes(secret.read_bytes()).signer()


def test_import_merges_a_revocation_into_the_stored_certificate(tmp_path: Path) -> None:
    """pgp.cert.d's insert is a merge: a revoked copy of a stored certificate adds the revocation and keeps the
    rest; the stored secret key gains it too, and stays protected."""
    key = Tsk.generate("Six <six@example.com>", profile=Profile.RFC9580)
    fpr = key.extract_certificate().fingerprint.upper()
    (tmp_path / "key.pgp").write_bytes(sqgen.protect(bytes(key), PASS))
    cert = key.extract_certificate()
    (tmp_path / "rev.pgp").write_bytes(bytes(cert) + bytes(cert.revoke(key.certifier())))
    sq = tmp_path / "sq"
    code, _, err = _atomicsig("keys", "import", "--sequoia-home", str(sq), str(tmp_path / "key.pgp"))
    assert code == 0, err
    code, out, err = _atomicsig("keys", "import", "--sequoia-home", str(sq), str(tmp_path / "rev.pgp"))
    assert code == 0 and out.strip() == f"updated {fpr} (Sequoia home)", err
    assert sequoia.read_certs(_cert_file(sq, fpr).read_bytes())[0].revoked
    stored = sequoia.read_certs(_softkey(sq, fpr).read_bytes())[0]
    assert stored.revoked and stored.secret
    Tsk.from_bytes(_softkey(sq, fpr).read_bytes()).signer(PASS)


def test_import_routes_v4_to_gnupg_and_refuses_v6_into_gnupg(tmp_path: Path) -> None:
    """``--keystore auto``: a file with a v4 and a v6 key puts the v4 one into GnuPG (gpg lists it) and the v6
    one into the Sequoia home. A v6 key bound for GnuPG (``--keystore gnupg``, or no Sequoia home named) is
    refused with one line, and nothing of the batch is written."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    v4_fpr = gen_key(home, "legacy", "ed25519")
    (tmp_path / "v4.gpg").write_bytes(gpg(home, "--export", v4_fpr))
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--delete-secret-and-public-key", v4_fpr],
                   check=True, capture_output=True)
    v6 = Tsk.generate("Six <six@example.com>", profile=Profile.RFC9580)
    v6_fpr = v6.extract_certificate().fingerprint.upper()
    (tmp_path / "mixed.gpg").write_bytes((tmp_path / "v4.gpg").read_bytes() + bytes(v6.extract_certificate()))
    sq = tmp_path / "sq"
    env = {"SEQUOIA_HOME": ""}
    for extra in (["--keystore", "gnupg", "--sequoia-home", str(sq)], []):
        code, _, err = _atomicsig("keys", "import", "--gnupghome", str(home), *extra, str(tmp_path / "v4.gpg"),
                                  str(tmp_path / "mixed.gpg"), env=env)
        assert code == 2, err
        assert err.strip().splitlines() == [f"atomicsig: error: {tmp_path / 'mixed.gpg'}: key {v6_fpr} is an "
                                            "OpenPGP v6 key: GnuPG 2.2 cannot hold OpenPGP v6 (rfc9580) keys; "
                                            "import it into a Sequoia home with --sequoia-home DIR"]
        assert not sq.exists()
        assert v4_fpr not in gpg(home, "--list-keys", "--with-colons").decode()  # nothing imported
    code, out, err = _atomicsig("keys", "import", "--gnupghome", str(home), "--sequoia-home", str(sq), "--json",
                                str(tmp_path / "mixed.gpg"), env=env)
    assert code == 0, err
    assert {(k["fingerprint"], k["keystore"]) for k in json.loads(out)["keys"]} == {(v4_fpr, "gnupg"),
                                                                                   (v6_fpr, "sequoia")}
    assert v4_fpr in gpg(home, "--list-keys", "--with-colons").decode()
    assert _cert_file(sq, v6_fpr).is_file() and not _cert_file(sq, v4_fpr).exists()
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


def test_import_of_something_that_is_no_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pgp").write_bytes(b"\x99\x00\x05hello")
    code, _, err = _atomicsig("keys", "import", "--keystore", "sequoia", "--sequoia-home", str(tmp_path / "sq"),
                              str(tmp_path / "junk.pgp"))
    assert code == 2 and "no OpenPGP key found" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sq").exists()


# ---- keys retire / rotate / delete on a Sequoia home ----------------------------------------------------------


@pytest.mark.slow
def test_retire_revoke_v6_key_then_verify_refuses_it(tmp_path: Path, pwfiles: tuple[Path, Path]) -> None:
    """Regression (issue 16): ``keys retire`` worked on GnuPG homes only. A post-quantum v6 key signs an image,
    is revoked in its Sequoia home (the passphrase from a file, never in argv or a child's environment), and
    ``verify --key`` with the re-exported certificate refuses the signature made *before* the revocation:
    "key … is revoked". A wrong passphrase changes nothing."""
    good, wrong = pwfiles
    sq = tmp_path / "sq"
    fpr = _generate(tmp_path, sq)["pq@example.com"]
    store = tmp_path / "store"
    _sign(sq, "pq@example.com", store, good)
    pub = tmp_path / "pq.pgp"
    code, _, err = _atomicsig("keys", "export", fpr, "--sequoia-home", str(sq), "-o", str(pub))
    assert code == 0, err
    code, img = _verify(store, str(pub))
    assert code == 0, img
    before = _snapshot(sq)
    code, _, err = _atomicsig("keys", "retire", "--revoke", fpr, "--sequoia-home", str(sq),
                              "--passphrase-file", str(wrong))
    assert code == 2 and "does not open with the given passphrase" in err and WRONG not in err, err
    assert _snapshot(sq) == before
    run = run_watched(tmp_path, ["keys", "retire", "--revoke", "pq@example.com", "--sequoia-home", str(sq),
                                 "--passphrase-env", "ATOMICSIG_V6_PW", "-o", str(tmp_path / "revocation.asc"),
                                 "--json"], env={"ATOMICSIG_V6_PW": PASS})
    assert run.code == 0, run.stderr
    # No gpg runs here (assert_clean wants one): the rest of its check — no child process's argv or environment,
    # no output or log holds the passphrase.
    assert not run.leaks and all(PASS not in t for t in (run.stdout, run.stderr, run.log)), run.leaks
    assert json.loads(run.stdout)["keys"] == [{"fingerprint": fpr, "action": "revoked", "expires": None,
                                               "revocation_certificate": str(tmp_path / "revocation.asc")}]
    rev = (tmp_path / "revocation.asc").read_bytes()
    assert rev.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK") and sequoia.read_certs(rev)[0].revoked
    assert sequoia.read_certs(_softkey(sq, fpr).read_bytes())[0].revoked  # both stores tell the same
    code, _, err = _atomicsig("keys", "export", fpr, "--sequoia-home", str(sq), "-o", str(pub))
    assert code == 0, err
    code, img = _verify(store, str(pub))
    assert code == 1 and img["signatures"][0]["reason"] == f"key {fpr} is revoked", img
    code, img = _verify(store, str(tmp_path / "revocation.asc"))  # the -o file is what a node can be given
    assert code == 1 and img["signatures"][0]["reason"] == f"key {fpr} is revoked", img
    # The e-mail no longer names a usable key: signing with it is refused.
    code, _, err = _atomicsig("sign", "--key", "pq@example.com", "--sequoia-home", str(sq), "--sigstore",
                              str(store), "--passphrase-file", str(good), "--force", IMAGE)
    assert code == 2 and f"no usable secret key pq@example.com in the Sequoia home {sq} (key {fpr} is revoked)" \
        in err, err


def test_retire_v6_key_expires_it_in_a_day(tmp_path: Path, pwfiles: tuple[Path, Path]) -> None:
    """Without --revoke: new self-signatures (Sequoia) make the key expire in one day, in pgp.cert.d and in the
    soft-key store; ``keys list`` shows it. The secret key stays protected by the same passphrase."""
    good, _ = pwfiles
    sq = tmp_path / "sq"
    fpr = _generate(tmp_path, sq)["modern@example.com"]
    store = tmp_path / "store"
    _sign(sq, "modern@example.com", store, good)
    now = time.time()
    code, out, err = _atomicsig("keys", "retire", fpr, "--sequoia-home", str(sq), "--passphrase-file", str(good),
                                "--json")
    assert code == 0, err
    done = json.loads(out)["keys"][0]
    assert done["action"] == "expires" and abs(done["expires"] - (now + 86400)) < 120
    for path in (_cert_file(sq, fpr), _softkey(sq, fpr)):
        info = sequoia.read_certs(path.read_bytes())[0]
        assert info.expires == done["expires"] and not info.revoked
    with pytest.raises(Exception):
        Tsk.from_bytes(_softkey(sq, fpr).read_bytes()).signer()
    Tsk.from_bytes(_softkey(sq, fpr).read_bytes()).signer(PASS)
    code, out, err = _atomicsig("keys", "list", "--sequoia-home", str(sq), "--json")
    listed = {k["fingerprint"]: k for k in json.loads(out)["keys"]}
    assert listed[fpr]["expires"] == done["expires"], err
    # What docs/keys-sequoia.md says of an expiry: the signature made before it still verifies with the
    # re-exported certificate (and will after the day is over: Sequoia judges a key at signing time).
    pub = tmp_path / "modern.pgp"
    code, _, err = _atomicsig("keys", "export", fpr, "--sequoia-home", str(sq), "-o", str(pub))
    assert code == 0 and sequoia.read_certs(pub.read_bytes())[0].expires == done["expires"], err
    code, img = _verify(store, str(pub))
    assert code == 0 and img["signatures"][0]["signer"] == fpr, img


def test_rotate_v6_signers_in_the_sequoia_home(tmp_path: Path, pwfiles: tuple[Path, Path]) -> None:
    """``keys rotate`` for ``keystore: sequoia`` signers: the same semantics as the GnuPG path — a new v6 key of
    the signer's algorithm, the old one expiring after --overlap, both certificates in ``<email>.gpg``; young
    keys left alone; --dry-run exits 1 when a rotation is due; ``sign --key EMAIL`` then uses the new key and
    Sequoia verifies its signature with the exported file."""
    sq = tmp_path / "sq"
    old = _generate(tmp_path, sq)
    signers = str(tmp_path / "signers.yaml")
    env = {"ATOMICSIG_V6_PW": PASS}
    code, out, err = _atomicsig("keys", "rotate", "-f", signers, "--sequoia-home", str(sq), "--json", env=env)
    assert code == 0 and {k["status"] for k in json.loads(out)["keys"]} == {"recent"}, err
    code, out, err = _atomicsig("keys", "rotate", "-f", signers, "--sequoia-home", str(sq), "--min-age", "0s",
                                "--dry-run", "--json", env=env)
    assert code == 1 and {k["status"] for k in json.loads(out)["keys"]} == {"planned"}, err
    now = time.time()
    export = tmp_path / "export"
    code, out, err = _atomicsig("keys", "rotate", "-f", signers, "--sequoia-home", str(sq), "--min-age", "0s",
                                "--overlap", "7d", "--export-dir", str(export), "--json", env=env)
    assert code == 0, err
    rotated = {k["email"]: k for k in json.loads(out)["keys"]}
    for email, r in rotated.items():
        assert r["status"] == "rotated" and r["old"] == old[email] and len(r["new"]) == 64
        assert abs(r["old_expires"] - (now + 7 * 86400)) < 120
        certs = {c.fingerprint: c for c in sequoia.read_certs((export / f"{email}.gpg").read_bytes())}
        assert set(certs) == {r["new"], r["old"]} and certs[r["old"]].expires == r["old_expires"]
        assert certs[r["new"]].version == 6
    assert sequoia.read_certs(_cert_file(sq, rotated["pq@example.com"]["new"]).read_bytes())[0].algorithm == \
        "MLDSA65_Ed25519"
    store = tmp_path / "store"
    _sign(sq, "pq@example.com", store, pwfiles[0])
    code, img = _verify(store, str(export / "pq@example.com.gpg"))
    assert code == 0 and img["signatures"][0]["signer"] == rotated["pq@example.com"]["new"], img


def test_rotate_with_a_wrong_passphrase_changes_nothing(tmp_path: Path) -> None:
    sq = tmp_path / "sq"
    _generate(tmp_path, sq)
    before = _snapshot(sq)
    code, _, err = _atomicsig("keys", "rotate", "-f", str(tmp_path / "signers.yaml"), "--sequoia-home", str(sq),
                              "--min-age", "0s", env={"ATOMICSIG_V6_PW": WRONG})
    assert code == 2 and "does not open with the given passphrase" in err and WRONG not in err, err
    assert _snapshot(sq) == before


def test_delete_from_a_sequoia_home(tmp_path: Path) -> None:
    """``keys delete --sequoia-home`` removes the certificate and the secret key of full fingerprints only; a
    cut-off v6 fingerprint (its first 40 digits) and other lengths are named as what they are."""
    sq = tmp_path / "sq"
    keys = _generate(tmp_path, sq)
    fpr = keys["modern@example.com"]
    for bad, says in ((fpr[:40], f"is the first 40 hex digits of the OpenPGP v6 key {fpr}"),
                      (fpr[:50], "has 50 hex digits: an OpenPGP fingerprint has 40 (v4) or 64 (v6)"),
                      ("modern@example.com", "delete needs a full fingerprint")):
        code, _, err = _atomicsig("keys", "delete", "--yes", "--sequoia-home", str(sq), bad)
        assert code == 2 and says in err, (bad, err)
    code, out, err = _atomicsig("keys", "delete", "--sequoia-home", str(sq), fpr)
    assert code == 2 and "without --yes" in err, err
    code, out, err = _atomicsig("keys", "delete", "--yes", "--sequoia-home", str(sq), fpr.lower(), "--json")
    assert code == 0 and json.loads(out) == {"deleted": [fpr]}, err
    assert not _cert_file(sq, fpr).exists() and not _softkey(sq, fpr).exists()
    code, out, err = _atomicsig("keys", "list", "--sequoia-home", str(sq), "--json")
    assert [k["fingerprint"] for k in json.loads(out)["keys"]] == [keys["pq@example.com"]], err


# ---- the gpg verifier and v6 ----------------------------------------------------------------------------------


def test_gpg_verifier_says_v6_is_not_supported(tmp_path: Path, pwfiles: tuple[Path, Path]) -> None:
    """Regression (issue 16): ``ATOMICSIG_VERIFIER=gpg`` with a v6 certificate said "no public keys found in the
    given --key values" (exit 2), and a v4+v6 key file trusted nothing at all (gpg refuses the whole keyring).
    Now: v6 keys alone cannot be checked by it (exit 3, saying why); beside v4 keys, a v6 signature is one
    refused signature named "not supported by the gpg verifier" and the v4 signature still accepts the image."""
    sq = tmp_path / "sq"
    fpr = _generate(tmp_path, sq)["modern@example.com"]
    store = tmp_path / "store"
    _sign(sq, "modern@example.com", store, pwfiles[0])
    v6 = tmp_path / "v6.pgp"
    v6.write_bytes(_cert_file(sq, fpr).read_bytes())
    env = {"ATOMICSIG_VERIFIER": "gpg"}
    code, img = _verify(store, str(v6), env=env)
    assert code == 3, img
    assert img["stderr"].strip() == (f"atomicsig: error: OpenPGP v6 key {fpr}: not supported by the gpg verifier "
                                     "(ATOMICSIG_VERIFIER=gpg: GnuPG 2.2 reads OpenPGP v4 only; the default "
                                     "verifier checks v6 through Sequoia)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    v4_fpr = gen_key(home, "legacy", "ed25519")
    both = tmp_path / "both.gpg"
    both.write_bytes(gpg(home, "--export", v4_fpr) + v6.read_bytes())
    code, img = _verify(store, str(both), env=env)
    assert code == 1, img
    assert img["signatures"][0]["reason"].startswith("OpenPGP v6 signature: not supported by the gpg verifier")
    code, _, err = _atomicsig("sign", "--key", v4_fpr, "--gnupghome", str(home), "--sigstore", str(store), IMAGE)
    assert code == 0, err
    code, img = _verify(store, str(both), env=env)
    assert code == 0 and [s["accepted"] for s in img["signatures"]] == [False, True], img
    code, img = _verify(store, str(both))  # the default verifier accepts both
    assert code == 0 and [s["accepted"] for s in img["signatures"]] == [True, True], img
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


# ---- fingerprints of the wrong length -------------------------------------------------------------------------


def test_fingerprints_of_the_wrong_length_are_named_everywhere(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 16 "Bad input": in every keys command that takes a fingerprint, a hex string of neither 40 (v4) nor
    64 (v6) digits is refused as such (exit 2, one line), a 64-hex one where only GnuPG is asked says v6, and the
    first 40 digits of a v6 fingerprint in a Sequoia home are named as a cut-off v6 fingerprint."""
    sq = tmp_path / "sq"
    fpr = _generate(tmp_path, sq)["modern@example.com"]
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    bad = "AB" * 25
    sqh = ("--sequoia-home", str(sq))
    (tmp_path / "s").mkdir()
    for args in (("sign", "--key", bad, *sqh, "--sigstore", str(tmp_path / "s"), IMAGE),
                 ("verify", "--key", bad, "--sigstore", str(tmp_path / "s"), IMAGE),
                 ("keys", "export", bad, *sqh), ("keys", "retire", bad, *sqh),
                 ("keys", "delete", "--yes", bad), ("keys", "delete", "--yes", bad, *sqh),
                 ("prune", "--key", bad, "--sigstore", str(tmp_path / "s"))):
        code, _, err = cli(*args, "--gnupghome", str(gnupg))
        assert code == 2 and "has 50 hex digits: an OpenPGP fingerprint has 40 (v4) or 64 (v6)" in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    for args in (("keys", "export", fpr[:40], *sqh), ("keys", "retire", fpr[:40], *sqh),
                 ("sign", "--key", fpr[:40], *sqh, "--sigstore", str(tmp_path / "s"), IMAGE)):
        code, _, err = cli(*args, "--gnupghome", str(gnupg))
        assert code == 2 and f"is the first 40 hex digits of the OpenPGP v6 key {fpr}" in err, (args, err)
    code, _, err = cli("keys", "delete", "--yes", fpr, "--gnupghome", str(gnupg))
    assert code == 2 and "delete it from its Sequoia home with --sequoia-home DIR" in err, err
    code, _, err = cli("verify", "--key", fpr, "--sigstore", str(tmp_path / "s"), "--gnupghome", str(gnupg),
                              IMAGE)
    assert code == 2 and "64-hex OpenPGP v6 fingerprint" in err, err


def test_set_expiry_and_revoke_are_sequoia_s_verdicts() -> None:
    """The two pysequoia calls the lifecycle rests on, read back by Sequoia alone: an expiry a day away, and a
    revocation Sequoia reports (``Cert.is_revoked``); a secret key merged with either keeps its protection."""
    key = sqgen.generate("A <a@example.com>", profile="rfc9580", algorithm="ed25519", validity_seconds=None)
    secret = sqgen.protect(key.secret, PASS)
    later = pysequoia.Cert.from_bytes(sqgen.set_expiry(secret, key.public, 86400, PASS))
    assert later.expiration is not None
    left = later.expiration - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=23) < left <= datetime.timedelta(days=1)
    assert pysequoia.Cert.from_bytes(sqgen.revoke(secret, key.public, PASS)).is_revoked
    merged = sqgen.merge_secret(secret, sqgen.revoke(secret, key.public, PASS))
    with pytest.raises(Exception):
        Tsk.from_bytes(merged).signer()
    Tsk.from_bytes(merged).signer(PASS)
