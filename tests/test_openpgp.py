"""The read-only OpenPGP parser and blob sniffing on real gpg output (SPEC §1.3), and TrustedKeys verification."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from atomicsig.errors import SignatureFormatError
from atomicsig.format import blob, payload
from atomicsig.gnupg.keyring import TrustedKeys
from atomicsig.openpgp import packets as openpgp
from tests.infra import GpgHome

DIG = "sha256:" + "a" * 64
PAYLOAD = payload.build("quay.io/ns/app:1", DIG, timestamp=1700000000)


def gpg_sign(home: GpgHome, data: bytes, *extra: str, users: list[str] | None = None) -> bytes:
    """Sign with the gpg CLI directly, independent of atomicsig's signing code."""
    cmd = ["gpg", "--homedir", str(home.path), "--batch", "--no-tty", "--digest-algo", "SHA256", *extra]
    for u in users or [home.fingerprint]:
        cmd += ["--local-user", u]
    cmd.append("--sign")
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("extra", [(), ("-z", "0"), ("--compress-algo", "zlib"), ("--compress-algo", "bzip2")])
def test_parse_gpg_output(signer: GpgHome, extra: tuple[str, ...]) -> None:
    data = gpg_sign(signer, PAYLOAD, *extra)
    blob.simple_signing_body(data)  # first byte accepted by c/image's FromBlob
    if extra == ("-z", "0"):
        assert data[0] in (0x90, 0xC4)  # one-pass signature first, no compression packet
    else:
        assert data[0] in (0xA3, 0xC8)
    msg = openpgp.parse_message(data)
    assert msg.literal == PAYLOAD
    assert msg.literal_format == ord("b")
    assert len(msg.signatures) == 1 and msg.one_pass_count == 1
    sig = msg.signatures[0]
    assert sig.issuer_fingerprint == signer.fingerprint
    assert sig.issuer_keyid == signer.fingerprint[-16:]
    assert sig.hash_algo == 8 and sig.sig_type == 0 and sig.created
    assert openpgp.untrusted_signer(data) == signer.fingerprint


def test_atomicsig_sign_output(signer: GpgHome) -> None:
    from atomicsig.gnupg.keyring import Keyring

    # A gpg.conf asking for armor/textmode must not leak into simple signatures.
    conf = signer.path / "gpg.conf"
    conf.write_text("armor\ntextmode\n")
    try:
        data = Keyring(str(signer.path)).sign(PAYLOAD, signer.fingerprint, None)
    finally:
        conf.unlink()
    assert data[0] != ord("-")
    msg = openpgp.parse_message(data)
    assert msg.literal == PAYLOAD and msg.literal_format == ord("b")
    assert msg.signatures[0].issuer_fingerprint == signer.fingerprint


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"-----BEGIN PGP MESSAGE-----\n", "ASCII-armored"),
    (b"<html>", "0x3c"),
    (b"\x93\x00", "0x93"),
    (b"\x00sigstore-json\n{}", "sigstore"),
    (b"\x00other\nxx", "unrecognized signature format"),
    (b"\x00simple-signing", "without a format name"),
])
def test_blob_sniff_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(SignatureFormatError, match=reason):
        blob.simple_signing_body(data)


def test_blob_framed_simple_signing() -> None:
    assert blob.simple_signing_body(b"\x00simple-signing\n\xa3abc") == b"\xa3abc"


@pytest.mark.parametrize("data", [b"\xa3\x05ab", b"\x90", b"\xc4\xff", b"\x8b\x00", b"\x7f", b"\xa3\x01\x09"])
def test_parser_rejects_garbage(data: bytes) -> None:
    with pytest.raises(SignatureFormatError):
        openpgp.parse_message(data)


def test_parser_limits_zip_bomb() -> None:
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = b"\x01" + c.compress(b"\x00" * (openpgp.MAX_DECOMPRESSED + 10)) + c.flush()
    pkt = bytes([0xC8, 0xFF]) + len(body).to_bytes(4, "big") + body
    with pytest.raises(SignatureFormatError, match="beyond the limit"):
        openpgp.parse_message(pkt)


# ---- cryptographic verification through an ephemeral home (SPEC §2.1) ---------------------------------------


def test_trusted_keys_verify(signer: GpgHome, other_signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:
    good = gpg_sign(signer, PAYLOAD)
    with TrustedKeys([signer_pub.read_bytes()]) as tk:
        assert tk.fingerprints == {signer.fingerprint}
        res = tk.verify(good)
        assert res.payload == PAYLOAD and res.signer == signer.fingerprint
        # Signed by a key that is not trusted.
        with pytest.raises(SignatureFormatError, match=r"untrusted|no public key|NO_PUBKEY"):
            tk.verify(gpg_sign(other_signer, PAYLOAD))
        # Corrupted: flip a byte in the middle of an uncompressed message's literal data.
        raw = bytearray(gpg_sign(signer, PAYLOAD, "-z", "0"))
        i = raw.find(b"quay.io")
        raw[i] ^= 0x01
        with pytest.raises(SignatureFormatError):
            tk.verify(bytes(raw))
        # Armored blobs are refused before gpg sees them.
        armored = gpg_sign(signer, PAYLOAD, "--armor")
        with pytest.raises(SignatureFormatError, match="ASCII-armored"):
            tk.verify(armored)
    assert not os.path.exists(tk._dir)


def test_trusted_keys_two_signatures_rejected(signer: GpgHome, other_signer: GpgHome, signer_pub: Path,
                                              tmp_path: Path) -> None:
    # Put both secret keys in one home to produce a message with two signatures.
    both = GpgHome(tmp_path / "both")
    both.path.mkdir(mode=0o700)
    for src in (signer, other_signer):
        sec = subprocess.run(["gpg", "--homedir", str(src.path), "--batch", "--export-secret-keys",
                              src.fingerprint], capture_output=True, check=True).stdout
        subprocess.run(["gpg", "--homedir", str(both.path), "--batch", "--import"], input=sec,
                       capture_output=True, check=True)
    try:
        data = gpg_sign(both, PAYLOAD, users=[signer.fingerprint, other_signer.fingerprint])
        assert [p.tag for p in openpgp.packets(openpgp._decompress(openpgp.packets(data)[0].body))] == [4, 4, 11, 2, 2]
        with pytest.raises(SignatureFormatError, match="signature count 2"):
            openpgp.parse_message(data)
        other_pub = other_signer.export_public(tmp_path / "other.gpg")
        with TrustedKeys([signer_pub.read_bytes(), other_pub.read_bytes()]) as tk, \
                pytest.raises(SignatureFormatError, match="signature count"):
            tk.verify(data)
    finally:
        both.kill_agent()


def test_trusted_keys_empty() -> None:
    with TrustedKeys([b"not a key"]) as tk, pytest.raises(SignatureFormatError, match="no public keys"):
        tk.verify(b"\xa3\x00")


# ---- one subpacket walker, one issuer-fingerprint rule (issue 13 item 3) ------------------------------------

_FPR = bytes(range(1, 21))


def _sig_body(issuer_fpr_subpacket: bytes, version: int = 4) -> bytes:
    """A v4 binary signature body: hashed creation time + the given issuer fingerprint subpacket, unhashed
    issuer key ID, a dummy hash prefix and MPI. Only its subpackets matter here."""
    def sub(stype: int, data: bytes) -> bytes:
        return bytes([len(data) + 1, stype]) + data

    hashed = sub(2, (1700000000).to_bytes(4, "big")) + sub(33, issuer_fpr_subpacket)
    unhashed = sub(16, _FPR[-8:])
    return bytes([version, 0, 1, 8]) + len(hashed).to_bytes(2, "big") + hashed + \
        len(unhashed).to_bytes(2, "big") + unhashed + b"\xab\xcd" + b"\x00\x01\x01"


@pytest.mark.parametrize(("subpacket", "valid"), [
    (b"\x04" + _FPR, True),  # the v4 form gpg writes
    (b"\x05" + _FPR, False),  # wrong version octet: the old packet reader took it, the verifier did not
    (b"\x04" + _FPR + b"\x00", False),  # 21 octets of "fingerprint": old reader took 42 hex digits
    (b"\x06" + _FPR + bytes(12), False),  # a v6 fingerprint in a v4 signature (RFC 9580 §5.2.3.35: malformed)
    (b"\x04" + _FPR[:19], False),  # too short: both refused it already
], ids=["v4", "version-5", "22-octets", "v6-in-v4-signature", "short"])
def test_issuer_fingerprint_one_rule(subpacket: bytes, valid: bool) -> None:
    """The packet reader (untrusted_signer, prune, re-sign skipping) and the in-process verifier name the same
    issuer fingerprint for a signature, or both none. Before one walker and one rule, a ``05`` + 20-octet
    subpacket was a fingerprint to the reader (any version, 21+ octets) and "unusual" to the verifier."""
    from atomicsig.gnupg import trusted

    info = openpgp.parse_signature(_sig_body(subpacket))
    reader = info.issuer_fingerprint
    try:
        _created, _expires, verifier, _keyid = trusted._signature_subpackets(info)
    except trusted._Delegate:
        verifier = None  # the verifier names no signer itself: gpg decides, by the key ID
    assert reader == verifier
    assert reader == (_FPR.hex().upper() if valid else None)
    assert info.issuer_keyid == _FPR[-8:].hex().upper()


def test_issuer_fingerprint_follows_signature_version() -> None:
    """v6 signatures name v6 (32-octet) fingerprints (RFC 9580 §5.2.3.35); a v4 one in a v6 signature names none."""
    fpr32 = bytes(range(32))
    assert openpgp.issuer_fingerprint(b"\x06" + fpr32, 6) == fpr32.hex().upper()
    assert openpgp.issuer_fingerprint(b"\x04" + _FPR, 6) is None
    assert openpgp.issuer_fingerprint(b"\x04" + _FPR, 4) == _FPR.hex().upper()
    assert openpgp.issuer_fingerprint(b"", 4) is None


def test_one_subpacket_walker_flags_critical_and_refuses_malformed() -> None:
    area = bytes([5, 0x80 | 2]) + bytes(4) + bytes([2, 100, 0x78])
    assert list(openpgp.subpackets(area)) == [(2, True, bytes(4)), (100, False, b"x")]
    for bad in (b"\x00", b"\x05\x02\x00", b"\xe0\x02"):  # zero length, overrun, partial length
        with pytest.raises(SignatureFormatError):
            list(openpgp.subpackets(bad))
