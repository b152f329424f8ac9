"""OpenPGP v6 keys through the whole key lifecycle (issue 16, this round): ``keys import``, ``rotate``, ``retire``
and ``delete`` on a Sequoia home, the gpg verifier (``ATOMICSIG_VERIFIER=gpg``) facing v6 keys and signatures,
and fingerprints of the wrong length wherever a keys command takes one.

Keys are made by the real CLI (Sequoia underneath) or by pysequoia directly (an independent maker for imports);
signatures by ``atomicsig sign``; verdicts by ``atomicsig verify`` and by pysequoia itself; the v4 side by gpg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_nativeverify import gen_key, gpg
from tests.test_secrets import PASS, WRONG

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
