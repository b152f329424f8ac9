"""The in-process signer (``--signer memory``, issue #6): it reads what ``gpg --export-secret-keys`` really
writes (clear and passphrase-protected), its messages are accepted by real gpg and skopeo with the (sub)key gpg
would choose, and a wrong passphrase is an input error that never shows the passphrase."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicsig.errors import PassphraseError, SignatureFormatError
from atomicsig.format import payload
from atomicsig.format.blob import simple_signing_body
from atomicsig.gnupg.keyring import Keyring, TrustedKeys
from atomicsig.openpgp import build as pgpsign
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp import secret as openpgp_secret
from atomicsig.openpgp.constants import PubkeyAlgo
from atomicsig.signers import agent as agentsign
from atomicsig.signers import factory
from atomicsig.signers import memory as memsign
from tests.infra import (
    PASSPHRASE,
    CmdlineWatch,
    GpgHome,
    Home,
    assert_skopeo_standalone_verify,
    certify_only_home,
    primary_key_homes,
)

DIGEST = "sha256:" + "cd" * 32
KEYS = ["rsa2048", "ed25519", "nistp256", "subkey"]


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, signer: GpgHome) -> Iterator[dict[str, Home]]:
    base = tmp_path_factory.mktemp("mem-homes")
    out = primary_key_homes(base, signer)
    # A certify-only primary with an RSA signing subkey and an ECDH encryption subkey (a packet the memory
    # signer must skip, not refuse).
    fpr, (_encr, signing) = certify_only_home(base / "sub", ("cv25519", "encr", "0"), ("rsa2048", "sign", "0"))
    out["subkey"] = Home(base / "sub", fpr, signing, PubkeyAlgo.RSA)
    yield out
    for name, h in out.items():
        if name != "ed25519":  # the session fixture owns that agent
            h.kill_agent()


@pytest.fixture(scope="module")
def pw_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgHome]:
    home = GpgHome(tmp_path_factory.mktemp("mem-pw") / "gnupg", email="mempw@example.com", algorithm="rsa2048",
                   passphrase=PASSPHRASE).create()
    yield home
    home.kill_agent()


@pytest.mark.parametrize("name", KEYS)
def test_memory_message_verifies_with_gpg_by_the_key_gpg_would_choose(homes: dict[str, Home], name: str) -> None:
    h = homes[name]
    data = payload.build("registry.example.com/mem/app:1", DIGEST)
    signer = memsign.memory_signer(h.keyring, h.fpr, None)
    assert signer.signing_key == h.signing_key and "PRIVATE" not in repr(signer).upper()
    blob = signer.sign(data)
    assert simple_signing_body(blob) == blob and blob[0] == 0x90  # pgpsign's framing, as the agent signer's
    sig = openpgp.parse_message(blob).signatures[0]
    assert sig.issuer_fingerprint == h.signing_key and sig.pubkey_algo == h.pubkey_algo
    with TrustedKeys([h.public()]) as keys:
        res = keys.verify(blob)
        assert res.payload == data and res.signer == h.fpr and res.signing_key == h.signing_key
        # the same layout as the agent signer's, packet for packet (only the signature value differs)
        agent = agentsign.agent_signer(h.keyring, h.fpr, None)
        try:
            agent_blob = agent.sign(data)
        finally:
            agent.close()
        assert [p.tag for p in openpgp.packets(agent_blob)] == [p.tag for p in openpgp.packets(blob)]
        # a tampered literal no longer verifies (the check above is not vacuous)
        bad = blob.replace(b"registry.example.com/mem/app:1", b"registry.example.com/mem/app:2")
        assert bad != blob
        with pytest.raises(SignatureFormatError):
            keys.verify(bad)


@pytest.mark.slow
def test_skopeo_standalone_verify_accepts_memory_signature(homes: dict[str, Home], tmp_path: Path) -> None:
    h = homes["rsa2048"]
    assert_skopeo_standalone_verify(h, tmp_path, memsign.memory_signer(h.keyring, h.fpr, None).sign)


def test_protected_export_is_decrypted_and_a_wrong_passphrase_is_detected(pw_home: GpgHome) -> None:
    kr = Keyring(str(pw_home.path))
    exported = kr.export_secret([pw_home.fingerprint], armor=False, passphrase=PASSPHRASE)
    packets = openpgp_secret.secret_key_packets(exported)
    primary = packets[pw_home.fingerprint]
    assert primary.secret[0] == 254 and primary.secret[2] == 3  # really protected: SHA-1 check, iterated+salted
    parts = kr.secret_key_parts(pw_home.fingerprint)
    signer = memsign.build_signer(exported, pw_home.fingerprint, parts, PASSPHRASE, 2_000_000_000)
    blob = signer.sign(payload.build("example.com/pw/app:1", DIGEST))
    with TrustedKeys([kr.export_public([pw_home.fingerprint], armor=False)]) as keys:
        assert keys.verify(blob).signer == pw_home.fingerprint
    with pytest.raises(PassphraseError) as err:  # the SHA-1 over the decrypted values catches it
        memsign.build_signer(exported, pw_home.fingerprint, parts, "not-" + PASSPHRASE, 2_000_000_000)
    assert PASSPHRASE not in str(err.value) and err.value.exit_code == 2
    with pytest.raises(PassphraseError):
        memsign.build_signer(exported, pw_home.fingerprint, parts, None, 2_000_000_000)


def test_cli_memory_signer_passphrase_right_and_wrong(pw_home: GpgHome, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pw_home.kill_agent()  # an empty passphrase cache: the export must use the passphrase given
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(PASSPHRASE + "\n")
    wrong.write_text("not-the-" + PASSPHRASE + "\n")
    store = tmp_path / "store"
    base = ["sign", "--signer", "memory", "--key", pw_home.fingerprint, "--gnupghome", str(pw_home.path),
            "--sigstore", str(store), f"example.com/pw/app:1@{DIGEST}"]
    with CmdlineWatch(PASSPHRASE) as watch:
        code, out, err = cli(*base, "--passphrase-file", str(wrong))
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "passphrase" in err
        assert PASSPHRASE not in out + err and "not-the-" not in out + err
        assert not list(store.rglob("signature-*"))
        code, out, err = cli(*base, "--passphrase-file", str(right))
        assert code == 0, err
        assert PASSPHRASE not in out + err
    assert watch.scans > 0 and watch.hits == []
    (blob_path,) = store.rglob("signature-1")
    with TrustedKeys([Keyring(str(pw_home.path)).export_public([pw_home.fingerprint], armor=False)]) as keys:
        assert keys.verify(blob_path.read_bytes()).signer == pw_home.fingerprint


def test_cli_memory_signer_from_file_200_refs(homes: dict[str, Home], cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    h = homes["rsa2048"]
    refs = [f"example.com/batch/app{i % 7}:v{i}@sha256:{i:064x}" for i in range(200)]
    listing = tmp_path / "refs.txt"
    listing.write_text("\n".join(refs) + "\n")
    store = tmp_path / "store"
    code, _out, err = cli("sign", "--signer", "memory", "--key", h.fpr, "--gnupghome", str(h.path),
                         "--sigstore", str(store), "--from-file", str(listing), "--json")
    assert code == 0, err
    blobs = sorted(store.rglob("signature-*"))
    assert len(blobs) == 200
    seen = set()
    with TrustedKeys([h.public()]) as keys:
        for p in blobs:
            blob = p.read_bytes()
            res = keys.verify(blob)
            assert res.signer == h.fpr and blob[0] == 0x90
            seen.add(json.loads(res.payload)["critical"]["image"]["docker-manifest-digest"])
    assert seen == {r.split("@", 1)[1] for r in refs}


def test_memory_is_explicit_only_and_refuses_stub_keys(homes: dict[str, Home]) -> None:
    assert "memory" in factory.SIGNER_MODES
    h = homes["nistp256"]
    auto = factory.make_signer(h.keyring, h.fpr, None, "auto")
    try:
        assert not isinstance(auto, memsign.MemorySigner)
    finally:
        factory.close_signer(auto)
    # a key whose secret is not present (gpg exports a gnu-dummy stub) cannot be used in memory
    exported = subprocess.run(["gpg", "--homedir", str(h.path), "--batch", "--export-secret-keys",
                               "--export-options", "export-minimal", h.fpr], capture_output=True, check=True).stdout
    packets = openpgp_secret.secret_key_packets(exported)
    stub = openpgp_secret.SecretKeyPacket(packets[h.fpr].public, bytes([254, 7, 101, 2]) + b"GNU\x01")
    with pytest.raises(pgpsign.UnsupportedKey):
        openpgp_secret.private_key(stub, None)
