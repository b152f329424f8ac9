"""OpenPGP v6 and post-quantum signatures (issue 16 #1, #5, #6 and "Bad input"), checked by ``atomicsig verify``.

Every v6 vector is made at test time by an independent implementation (pysequoia, imported here directly, not
through atomicsig) and judged through the CLI's ``--json``; the v4 ones by the real gpg. The existing v4
differential tests (tests/test_nativeverify.py, tests/test_differential.py) stay as they are.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pysequoia as sq
import pytest
from pysequoia import CipherSuite, Profile, SignatureMode, SigningAlgorithm, Tsk

from atomicsig.errors import InputError, PolicyError, SignatureFormatError
from atomicsig.format import payload, validate
from atomicsig.gnupg import trusted as nativeverify
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import PacketTag
from tests.test_nativeverify import gen_key, gpg, sign

REPO = "quay.io/ns/app"
DIG = "sha256:" + "c" * 64
REF = f"{REPO}@{DIG}"
PAYLOAD = payload.build(REPO + ":1", DIG, timestamp=1700000000)


def v6_key(name: str, **algo: object) -> Tsk:
    return Tsk.generate(f"{name} <{name}@example.com>", profile=Profile.RFC9580, **algo)  # type: ignore[arg-type]


def v6_sign(key: Tsk, data: bytes = PAYLOAD) -> bytes:
    return sq.sign(key.signer(), data, mode=SignatureMode.INLINE, armor=False)


def frame(tag: int, body: bytes) -> bytes:
    """A new-format packet with a five-octet length (RFC 9580 §4.2.1.3), valid for any body size."""
    return bytes([0xC0 | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def rewrite_signature(blob: bytes, change: object) -> bytes:
    """The message with its signature packet body replaced by ``change(body)``."""
    out = b""
    for p in openpgp.packets(blob):
        body = change(p.body) if p.tag == PacketTag.SIGNATURE else p.body  # type: ignore[operator]
        out += frame(p.tag, body)
    return out


@dataclass
class Keys:
    ed25519: Tsk
    mldsa65: Tsk
    mldsa87: Tsk
    ed448: Tsk
    other: Tsk
    dir: Path
    v4_home: Path
    v4_fpr: str

    def cert_file(self, key: Tsk, name: str, *, armor: bool = False) -> str:
        cert = key.extract_certificate()
        p = self.dir / f"{name}.{'asc' if armor else 'pgp'}"
        p.write_bytes(str(cert).encode() if armor else bytes(cert))
        return str(p)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    d = tmp_path_factory.mktemp("v6keys")
    home = d / "gnupg"
    home.mkdir(mode=0o700)
    fpr = gen_key(home, "legacy", "ed25519")
    (d / "v4.gpg").write_bytes(gpg(home, "--export", fpr))
    yield Keys(v6_key("ed"), v6_key("pq65", cipher_suite=CipherSuite.MLDSA65_Ed25519),
               v6_key("pq87", cipher_suite=CipherSuite.MLDSA87_Ed448),
               v6_key("ed448", signing_algorithm=SigningAlgorithm.Ed448), v6_key("other"), d, home, fpr)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


def store(tmp_path: Path, *blobs: bytes) -> str:
    d = tmp_path / "sigstore" / f"ns/app@{DIG.replace(':', '=')}"
    d.mkdir(parents=True)
    for i, b in enumerate(blobs, 1):
        (d / f"signature-{i}").write_bytes(b)
    return str(tmp_path / "sigstore")


def verify(sigstore: str, *key_files: str) -> tuple[int, dict]:
    args = [sys.executable, "-m", "atomicsig", "verify", "--sigstore", sigstore, "--json"]
    for k in key_files:
        args += ["--key", k]
    proc = subprocess.run([*args, REF], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RUST_BACKTRACE": "0"})
    if proc.returncode == 2 or not proc.stdout:
        return proc.returncode, {"stderr": proc.stderr}
    return proc.returncode, json.loads(proc.stdout)["images"][0]


@pytest.mark.parametrize("which", ["ed25519", "mldsa65", "mldsa87", "ed448"])
def test_v6_signature_accepted(which: str, keys: Keys, tmp_path: Path) -> None:
    key = getattr(keys, which)
    rc, img = verify(store(tmp_path, v6_sign(key)), keys.cert_file(key, which, armor=which == "ed25519"))
    assert rc == 0, img["reason"]
    sig = img["signatures"][0]
    assert sig["signer"] == key.extract_certificate().fingerprint.upper() and len(sig["signer"]) == 64
    # Accepted by Sequoia; a node still on the GPGME backend refuses it, and the reason says so (issue 16 #5).
    assert sig["backends"]["sequoia"] == "accept" and sig["backends"]["gpgme"].startswith("refuse: GnuPG")
    assert sig["reason"].startswith("accepted; nodes on containers/image's GPGME backend refuse it")


def test_v6_refusals_are_precise(keys: Keys, tmp_path: Path) -> None:
    good = v6_sign(keys.mldsa65)
    tampered = good.replace(b"quay.io/ns/app", b"quay.io/ns/apq")
    wrong_key = v6_sign(keys.other)
    rc, img = verify(store(tmp_path, tampered, wrong_key), keys.cert_file(keys.mldsa65, "pq"))
    assert rc == 1
    reasons = [s["reason"] for s in img["signatures"]]
    assert reasons[0].startswith("bad signature"), reasons
    assert reasons[1].startswith("signed by an untrusted key ") and len(reasons[1].split()[-1]) == 64


def test_revoked_v6_key_refused(keys: Keys, tmp_path: Path) -> None:
    key = v6_key("revoked")
    blob = v6_sign(key)
    cert = key.extract_certificate()
    revoked = cert.merge(sq.Cert.from_bytes(bytes(cert) + bytes(cert.revoke(key.certifier()))))
    (tmp_path / "rev.pgp").write_bytes(bytes(revoked))
    rc, img = verify(store(tmp_path, blob), str(tmp_path / "rev.pgp"))
    assert rc == 1 and img["signatures"][0]["reason"] == f"key {cert.fingerprint.upper()} is revoked"


@pytest.mark.slow
def test_expired_v6_key_decided_by_sequoia(keys: Keys, tmp_path: Path) -> None:
    """Sequoia's standard policy judges the key at the signature's time: a signature made while the key was alive
    stays valid after the key expires, as on a node with c/image's Sequoia backend (GPGME would refuse it)."""
    key = v6_key("expiring")
    blob = v6_sign(key)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    cert = key.extract_certificate().set_expiration(soon, key.certifier())
    (tmp_path / "exp.pgp").write_bytes(bytes(cert))
    time.sleep(2.5)
    assert cert.expiration is not None and cert.expiration < datetime.datetime.now(datetime.UTC)
    rc, img = verify(store(tmp_path, blob), str(tmp_path / "exp.pgp"))
    assert rc == 0, img["reason"]


def test_v4_and_v6_side_by_side(keys: Keys, tmp_path: Path) -> None:
    """Regression (issue 16): a v6 signature beside a valid v4 one said "invalid signature: no data was
    provided"; it now says who signed it, and the image is still accepted through the v4 one."""
    v4 = sign(keys.v4_home, keys.v4_fpr, data=PAYLOAD)
    v6 = v6_sign(keys.ed25519)
    sigstore = store(tmp_path, v6, v4)
    rc, img = verify(sigstore, str(keys.dir / "v4.gpg"))
    assert rc == 0
    reason = img["signatures"][0]["reason"]
    assert reason.startswith("signed by an untrusted key ") and len(reason.split()[5]) == 64, reason
    assert reason.endswith("(an OpenPGP v6 signature, and every trusted key is v4)"), reason
    assert img["signatures"][1]["accepted"]
    rc, img = verify(sigstore, str(keys.dir / "v4.gpg"), keys.cert_file(keys.ed25519, "ed"))
    assert rc == 0 and [s["accepted"] for s in img["signatures"]] == [True, True]
    rc, img = verify(sigstore, keys.cert_file(keys.ed25519, "ed"))  # only the v6 key: no longer "no public keys"
    assert rc == 0 and [s["accepted"] for s in img["signatures"]] == [True, False]


def test_unsupported_algorithm_is_one_refused_signature(keys: Keys, tmp_path: Path) -> None:
    good = v6_sign(keys.ed25519)
    unknown = rewrite_signature(good, lambda b: b[:2] + bytes([99]) + b[3:])
    dsa = rewrite_signature(good, lambda b: b[:2] + bytes([17]) + b[3:])
    rc, img = verify(store(tmp_path, unknown, dsa, good), keys.cert_file(keys.ed25519, "ed"))
    assert rc == 0
    reasons = [s["reason"] for s in img["signatures"]]
    assert reasons[:2] == ["OpenPGP v6 signature, algorithm 99: not supported",
                           "OpenPGP v6 signature, algorithm DSA: not supported"]


def test_bad_v6_input_never_crashes_or_accepts(keys: Keys) -> None:
    """Truncated packets, an ML-DSA signature of the wrong length, a v6 cert with a broken binding signature."""
    good = v6_sign(keys.mldsa65)
    cert = bytes(keys.mldsa65.extract_certificate())
    blobs = [good[:n] for n in (1, 3, 40, 80, len(good) // 2, len(good) - 1)]
    # Regression: bytes after the ML-DSA signature were ignored (and the message accepted) by Sequoia.
    blobs += [rewrite_signature(good, lambda b: b[:-1]), rewrite_signature(good, lambda b: b[:-100]),
              rewrite_signature(good, lambda b: b + b"\x00" * 7)]
    with nativeverify.NativeTrustedKeys([cert]) as v:
        assert v.verify(good).payload == PAYLOAD
        for blob in blobs:
            with pytest.raises(SignatureFormatError):
                v.verify(blob)
    # Flip one byte inside each binding signature of the certificate: the signing subkey loses its binding.
    pk = openpgp.packets(cert)
    broken = b"".join(frame(p.tag, p.body[:-5] + bytes([p.body[-5] ^ 1]) + p.body[-4:]
                            if p.tag == PacketTag.SIGNATURE else p.body) for p in pk)
    with nativeverify.NativeTrustedKeys([broken]) as v, pytest.raises(SignatureFormatError):
        v.verify(good)


def test_backends_disagree_on_sha1_and_rsa1024(keys: Keys, tmp_path: Path) -> None:
    """gpg-made v4 signatures GPGME accepts and Sequoia's standard policy refuses (issue 16 #5)."""
    home = keys.v4_home
    rsa1k = gen_key(home, "small", "rsa1024")
    (tmp_path / "k.gpg").write_bytes(gpg(home, "--export", rsa1k, keys.v4_fpr))
    sha1 = sign(home, keys.v4_fpr, "--digest-algo", "SHA1", data=PAYLOAD)
    short = sign(home, rsa1k, data=PAYLOAD)
    rc, img = verify(store(tmp_path, sha1, short), str(tmp_path / "k.gpg"))
    assert rc == 0
    first, second = img["signatures"]
    assert first["accepted"] and first["backends"] == {
        "gpgme": "accept", "sequoia": "refuse: SHA-1 data signature (Sequoia's standard policy refuses it)"}
    assert "Sequoia backend refuse it: SHA-1" in first["reason"]
    assert second["accepted"] and second["backends"]["sequoia"].startswith("refuse: RSA key of 1024 bits")


def test_v6_certificate_in_policy_keys(keys: Keys, tmp_path: Path) -> None:
    from atomicsig.policy import keymaterial
    from atomicsig.policy.schema import loads

    cert = keys.cert_file(keys.mldsa65, "pq")
    both = tmp_path / "both.pgp"
    both.write_bytes((keys.dir / "v4.gpg").read_bytes() + Path(cert).read_bytes())
    text = f"keys:\n  pq:\n    file: {cert}\n  both:\n    file: {both}\n" \
        "default: reject\nscopes:\n  quay.io/ns:\n    signed-by: pq\n"
    spec = loads(text, str(tmp_path / "p.yaml"), tmp_path)
    km = keymaterial.resolve(spec, None)
    fpr6 = keys.mldsa65.extract_certificate().fingerprint.upper()
    assert km["pq"].fingerprints == (fpr6,)
    assert set(km["both"].fingerprints) == {fpr6, keys.v4_fpr}
    with nativeverify.NativeTrustedKeys([km["both"].data]) as v:
        assert v.fingerprints == {fpr6, keys.v4_fpr}
        assert v.verify(v6_sign(keys.mldsa65)).signer == fpr6
    secret = tmp_path / "secret.pgp"
    secret.write_bytes(bytes(keys.mldsa65))
    spec = loads(f"keys:\n  s:\n    file: {secret}\ndefault: reject\n", str(tmp_path / "s.yaml"), tmp_path)
    with pytest.raises(PolicyError, match="holds a SECRET key"):
        keymaterial.resolve(spec, None)


def test_fingerprint_lengths_are_told_apart(keys: Keys, tmp_path: Path) -> None:
    v6 = keys.ed25519.extract_certificate().fingerprint
    with pytest.raises(InputError, match="64-hex OpenPGP v6 fingerprint"):
        validate.check_fingerprint("key 'x'", v6)
    assert validate.check_fingerprint("key 'x'", keys.v4_fpr.lower()) == keys.v4_fpr
    rc, out = verify(store(tmp_path, v6_sign(keys.ed25519)), v6)
    assert rc == 2 and "64-hex OpenPGP v6 fingerprint" in out["stderr"]
    # A v4 fingerprint given where the signature names a v6 key: refused as untrusted, never accepted.
    rc, img = verify(str(tmp_path / "sigstore"), str(keys.dir / "v4.gpg"))
    assert rc == 1 and img["signatures"][0]["reason"].startswith("signed by an untrusted key")


def test_v6_certificate_as_sync_trusted_key(keys: Keys, tmp_path: Path) -> None:
    """sync (and serve) build their verifier from the trusted-keys files with the same factory: a v6 file works."""
    from atomicsig.sync import daemon

    cert = keys.cert_file(keys.mldsa87, "pq87", armor=True)
    verifier = daemon._gpg_verifier([Path(cert).read_bytes()])
    try:
        fpr = keys.mldsa87.extract_certificate().fingerprint.upper()
        assert verifier.fingerprints == {fpr}
        assert verifier.verify(v6_sign(keys.mldsa87)).signer == fpr
        with pytest.raises(SignatureFormatError, match="signed by an untrusted key"):
            verifier.verify(v6_sign(keys.ed25519))
    finally:
        verifier.close()  # type: ignore[attr-defined]


def test_backends_disagree_on_key_expired_after_signing(keys: Keys, tmp_path: Path) -> None:
    """GPGME refuses a signature once its key has expired; Sequoia judges the key at the signature's time and
    accepts it: a refusal today that a node upgraded to the Sequoia backend would turn into an acceptance."""
    home = keys.v4_home
    past = "20200101T000000!"
    fpr = gen_key(home, "lapsed", "ed25519", expire="1y", faked=past)
    (tmp_path / "k.gpg").write_bytes(gpg(home, "--export", fpr))
    blob = sign(home, fpr, faked="20200601T000000!", data=PAYLOAD)
    rc, img = verify(store(tmp_path, blob), str(tmp_path / "k.gpg"))
    assert rc == 1
    sig = img["signatures"][0]
    assert sig["reason"].endswith("has expired; nodes on containers/image's Sequoia backend accept it"), sig
    assert sig["backends"]["sequoia"] == "accept" and sig["backends"]["gpgme"].startswith("refuse: ")
