"""The gpg-agent signer (issue #6): its messages must be accepted by real gpg and real skopeo, it must sign with
the (sub)key gpg would choose, keep passphrases out of every output, and fall back to gpg when it cannot sign."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicsig.errors import InputError, PassphraseError
from atomicsig.format import payload
from atomicsig.format.blob import simple_signing_body
from atomicsig.gnupg import agent as gnupg_agent
from atomicsig.gnupg import assuan, csexp
from atomicsig.gnupg.colons import SecretKeyPart
from atomicsig.gnupg.keyring import Keyring, TrustedKeys
from atomicsig.openpgp import build
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import HashAlgo, PubkeyAlgo
from atomicsig.ops import resolve
from atomicsig.ops import sign as signing
from atomicsig.signers import agent as agentsign
from atomicsig.signers import factory
from atomicsig.signers import gpg as signers_gpg
from atomicsig.store.directory import DirectoryStore
from tests.conftest import needs_registry
from tests.infra import (
    PASSPHRASE,
    CmdlineWatch,
    GpgHome,
    Home,
    Registry,
    assert_skopeo_standalone_verify,
    certify_only_home,
    primary_key_homes,
    push_image,
    quick_home,
    registries_d,
    signed_by_policy,
    skopeo_pull,
)


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, signer: GpgHome) -> Iterator[dict[str, Home]]:
    base = tmp_path_factory.mktemp("agent-homes")
    out = primary_key_homes(base, signer)
    # A certify-only primary, a valid signing subkey, then a *newer* signing subkey that has expired: gpg
    # --local-user skips the expired one and signs with the older valid one.
    # Creation times have one-second resolution; the expired subkey must be strictly newer.
    fpr, (valid, expired) = certify_only_home(base / "sub", ("nistp256/ecdsa", "sign", "0"),
                                              ("ed25519", "sign", "seconds=1"), apart=1.1)
    out["subkey"] = Home(base / "sub", fpr, valid, PubkeyAlgo.ECDSA)
    out["subkey"].expired_subkey = expired  # type: ignore[attr-defined]
    time.sleep(2.1)  # let the newer subkey expire (gpg: expired once its expiry is before now)
    yield out
    for name, h in out.items():
        if name != "ed25519":  # the session fixture owns that agent
            h.kill_agent()


KEYS = ["rsa2048", "ed25519", "nistp256", "subkey"]
DIGEST = "sha256:" + "ab" * 32


# ---- the message: real gpg accepts it, and it is signed by the key gpg would pick ---------------------------


@pytest.mark.parametrize("name", KEYS)
def test_agent_message_verifies_with_gpg_and_matches_gpg_key_choice(homes: dict[str, Home], name: str) -> None:
    h = homes[name]
    data = payload.build("registry.example.com/app:1", DIGEST)
    signer = agentsign.agent_signer(h.keyring, h.fpr, None)
    try:
        blob = signer.sign(data)
    finally:
        signer.close()
    assert simple_signing_body(blob) == blob and blob[0] == 0x90  # our framing, not gpg's compressed one
    msg = openpgp.parse_message(blob)
    sig = msg.signatures[0]
    assert msg.literal == data and msg.one_pass_count == 1 and sig.sig_type == 0
    assert sig.issuer_fingerprint == h.signing_key and sig.issuer_keyid == h.signing_key[-16:]
    assert sig.pubkey_algo == h.pubkey_algo and sig.hash_algo == HashAlgo.SHA256
    with TrustedKeys([h.public()]) as keys:
        res = keys.verify(blob)
    assert res.payload == data and res.signer == h.fpr and res.signing_key == h.signing_key
    # differential: gpg --local-user FPR picks the same (sub)key
    gpg_blob = signers_gpg.GPGSigner(h.keyring, h.fpr).sign(data)
    assert openpgp.parse_message(gpg_blob).signatures[0].issuer_fingerprint == h.signing_key


def test_expired_newer_subkey_is_skipped(homes: dict[str, Home]) -> None:
    h = homes["subkey"]
    parts = h.keyring.secret_key_parts(h.fpr)
    assert {p.fingerprint for p in parts} == {h.fpr, h.signing_key, h.expired_subkey}  # type: ignore[attr-defined]
    chosen = gnupg_agent.choose_signing_key(parts, int(time.time()))
    assert chosen is not None and chosen.fingerprint == h.signing_key


@pytest.mark.slow
@pytest.mark.parametrize("name", KEYS)
def test_skopeo_standalone_verify_accepts_agent_signature(homes: dict[str, Home], name: str,
                                                          tmp_path: Path) -> None:
    signer = agentsign.agent_signer(homes[name].keyring, homes[name].fpr, None)
    try:
        assert_skopeo_standalone_verify(homes[name], tmp_path, signer.sign, n=name)
    finally:
        signer.close()


@pytest.mark.slow
@needs_registry
@pytest.mark.parametrize("name", ["ed25519", "rsa2048"])
def test_skopeo_copy_accepts_image_signed_through_agent(homes: dict[str, Home], registry: Registry, cli,  # type: ignore[no-untyped-def]
                                                        name: str, tmp_path: Path) -> None:
    h = homes[name]
    ref = f"{registry.host}/agent/{name}:1"
    push_image(registry.host, f"agent/{name}:1", f"agent-{name}", tmp_path)
    store = tmp_path / "sigstore"
    code, _, err = cli("sign", "--signer", "agent", "--key", h.fpr, "--gnupghome", str(h.path), "--sigstore",
                       str(store), "--tls-verify=false", ref)
    assert code == 0, err
    (blob_path,) = store.rglob("signature-1")
    assert blob_path.read_bytes()[0] == 0x90  # made by the agent signer
    pub = tmp_path / "pub.gpg"
    pub.write_bytes(h.public())
    policy = signed_by_policy(tmp_path / "policy.json", pub)
    regd = registries_d(tmp_path / "registries.d", f"file://{store}")
    res = skopeo_pull(ref, policy, regd, tmp_path)
    assert res.returncode == 0, res.stderr
    # and the same policy rejects an unsigned image (the check is not vacuous)
    push_image(registry.host, f"agent/{name}-unsigned:1", f"agent-{name}-unsigned", tmp_path)
    assert skopeo_pull(f"{registry.host}/agent/{name}-unsigned:1", policy, regd, tmp_path).returncode != 0


# ---- passphrases ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pw_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgHome]:
    home = GpgHome(tmp_path_factory.mktemp("agent-pw") / "gnupg", email="pw@example.com",
                   passphrase=PASSPHRASE).create()
    yield home
    home.kill_agent()


def _manifest_file(tmp_path: Path) -> Path:
    m = tmp_path / "m.json"
    m.write_text('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}')
    return m


@pytest.mark.parametrize("mode", ["auto", "agent"])
def test_passphrase_right_wrong_missing(pw_home: GpgHome, cli, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    pw_home.kill_agent()  # start with an empty passphrase cache: the agent would otherwise sign from it
    man = _manifest_file(tmp_path)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(PASSPHRASE + "\n")
    wrong.write_text("not-the-" + PASSPHRASE + "\n")
    store = tmp_path / "store"
    base = ["sign", "--signer", mode, "--key", pw_home.fingerprint, "--gnupghome", str(pw_home.path),
            "--sigstore", str(store), "--manifest", str(man), "example.com/pw/app:1"]
    with CmdlineWatch(PASSPHRASE) as watch:
        code, out, err = cli(*base)
        assert code == 2
        assert "needs a passphrase" in err and "--passphrase-file" in err
        code, out, err = cli(*base, "--passphrase-file", str(wrong))
        assert code == 2
        # Checked before any image is signed (gnupg_agent.check_passphrase), so it is one error, not a FAILED line.
        assert "wrong passphrase" in err
        assert PASSPHRASE not in out + err and "not-the-" not in out + err
        assert not list(store.rglob("signature-*"))
        code, out, err = cli(*base, "--passphrase-file", str(right))
        assert code == 0, err
        assert PASSPHRASE not in out + err
    assert watch.scans > 0 and watch.hits == []
    (blob_path,) = store.rglob("signature-1")
    blob = blob_path.read_bytes()
    assert blob[0] == 0x90  # the agent signed it, with the passphrase sent over the socket
    with TrustedKeys([Keyring(str(pw_home.path)).export_public([pw_home.fingerprint], armor=False)]) as keys:
        assert keys.verify(blob).signer == pw_home.fingerprint


def test_passphrase_never_in_repr_or_error(pw_home: GpgHome) -> None:
    pw_home.kill_agent()
    kr = Keyring(str(pw_home.path))
    with pytest.raises(PassphraseError) as early:
        agentsign.agent_signer(kr, pw_home.fingerprint, "wrong " + PASSPHRASE)
    assert PASSPHRASE not in str(early.value) and early.value.__cause__ is None
    key = gnupg_agent.choose_signing_key(kr.secret_key_parts(pw_home.fingerprint), int(time.time()))
    assert key is not None
    s = agentsign.AgentSigner(kr.home, pw_home.fingerprint, key, "wrong " + PASSPHRASE)  # no up-front check
    try:
        assert PASSPHRASE not in repr(s)
        with pytest.raises(PassphraseError) as info:
            s.sign(b"{}")
        assert PASSPHRASE not in str(info.value) and PASSPHRASE not in repr(info.value)
        assert info.value.__cause__ is None and info.value.__context__ is not None
        assert PASSPHRASE not in str(info.value.__context__)
    finally:
        s.close()
    assert PASSPHRASE not in repr(signers_gpg.GPGSigner(kr, pw_home.fingerprint, PASSPHRASE))


@pytest.mark.parametrize("mode", ["auto", "agent", "gpg", "memory"])
def test_cached_passphrase_does_not_sign_for_a_wrong_or_missing_one(pw_home: GpgHome, cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                    mode: str) -> None:
    """Issue 11 #7: after one correct use gpg-agent caches the passphrase; a wrong one (or none) must still be
    refused with exit 2, and only --use-agent-cache may sign from the cache."""
    pw_home.kill_agent()
    man = _manifest_file(tmp_path)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(PASSPHRASE + "\n")
    wrong.write_text("not-the-" + PASSPHRASE + "\n")
    store = tmp_path / "store"

    def run(ident: str, *extra: str) -> tuple[int, str, str]:
        return cli("sign", "--signer", mode, "--key", pw_home.fingerprint, "--gnupghome", str(pw_home.path),
                   "--sigstore", str(store), "--manifest", str(man), f"example.com/pw/{ident}:1", *extra)

    with CmdlineWatch(PASSPHRASE) as watch:
        code, out, err = run("first", "--passphrase-file", str(right))
        assert code == 0, err
        # The agent now holds the passphrase (gpg's own wrong-passphrase check would pass from here on).
        code, out, err = run("wrong", "--passphrase-file", str(wrong))
        assert code == 2, (out, err)
        assert "wrong passphrase" in err
        code, out, err = run("none")
        assert code == 2, (out, err)
        assert "needs a passphrase" in err and "--use-agent-cache" in err
        assert PASSPHRASE not in out + err and "not-the-" not in out + err
        if mode != "memory":  # the memory signer decrypts the exported key itself: it always needs the passphrase
            code, out, err = run("cached", "--use-agent-cache")
            assert code == 0, err
        code, out, err = run("again", "--passphrase-file", str(right))
        assert code == 0, err
    assert watch.scans > 0 and watch.hits == []
    # Exactly the accepted runs stored a signature.
    identities = sorted(payload.parse(openpgp.parse_message(p.read_bytes()).literal).docker_reference
                        for p in store.rglob("signature-*"))
    expected = ["first", "again"] + (["cached"] if mode != "memory" else [])
    assert identities == sorted(f"example.com/pw/{i}:1" for i in expected)


def test_gpg_keyring_sign_checks_a_given_passphrase_against_the_agent(pw_home: GpgHome) -> None:
    """The gpg-process path below the CLI: Keyring.sign with a wrong passphrase after a right one."""
    pw_home.kill_agent()
    kr = Keyring(str(pw_home.path))
    kr.sign(b"{}", pw_home.fingerprint, PASSPHRASE)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        Keyring(str(pw_home.path)).sign(b"{}", pw_home.fingerprint, "not-the-" + PASSPHRASE)
    with pytest.raises(PassphraseError, match="needs a passphrase"):
        Keyring(str(pw_home.path)).sign(b"{}", pw_home.fingerprint, None)


@pytest.mark.parametrize("mode", ["auto", "agent", "gpg"])
def test_agent_cache_is_a_parameter_not_a_process_switch(pw_home: GpgHome, mode: str) -> None:
    """``--use-agent-cache`` is passed down explicitly (issue 13 #4): one caller allowing the agent's cache does not
    let a later caller in the same process sign from it. (It was a module-level switch set by a click callback.)"""
    from atomicsig.ops.keys import open_signers

    pw_home.kill_agent()
    with open_signers([pw_home.fingerprint], str(pw_home.path), PASSPHRASE, mode) as (signer,):
        signer.sign(b"{}")  # the agent now caches the passphrase
    with open_signers([pw_home.fingerprint], str(pw_home.path), None, mode, agent_cache=True) as (signer,):
        assert signer.sign(b"{}")
    with pytest.raises(PassphraseError, match="needs a passphrase"), \
            open_signers([pw_home.fingerprint], str(pw_home.path), None, mode) as (signer,):
        signer.sign(b"{}")


# ---- concurrency and connection handling ----------------------------------------------------------------------


def test_eight_threads_two_hundred_payloads_one_store(homes: dict[str, Home], tmp_path: Path) -> None:
    h = homes["ed25519"]
    signer = agentsign.agent_signer(h.keyring, h.fpr, None)
    # 50 images x 4 tags: four signers race for signature-1..4 of each digest directory
    refs = [f"example.com/load/app{i % 50}:t{i // 50}@sha256:{hashlib.sha256(str(i % 50).encode()).hexdigest()}"
            for i in range(200)]
    store = DirectoryStore(tmp_path / "store")
    try:
        outcomes = signing.sign_many(refs, resolver=resolve.Resolver(), signer=signer, store=store, workers=8)
        assert len(signer._open) <= 9  # the probe's, then one per worker thread — not one per signature
    finally:
        signer.close()
    assert [o.status for o in outcomes] == ["signed"] * 200, [o.error for o in outcomes if o.error]
    claims = set()
    with TrustedKeys([h.public()]) as keys:
        for o in outcomes:
            assert o.target is not None
            for stored in store.read(o.target.ref, o.target.digest):
                res = keys.verify(stored.blob)
                assert res.signer == h.fpr
                p = json.loads(res.payload)["critical"]
                claims.add((p["identity"]["docker-reference"], p["image"]["docker-manifest-digest"]))
    assert claims == {(o.target.identity, o.target.digest) for o in outcomes if o.target}
    assert len(claims) == 200
    assert sorted(p.name for p in (tmp_path / "store").rglob("signature-*")).count("signature-4") == 50
    assert not list((tmp_path / "store").rglob("signature-5"))


def test_reconnects_after_agent_restart(tmp_path: Path) -> None:
    h = GpgHome(tmp_path / "gnupg", email="restart@example.com").create()
    kr = Keyring(str(h.path))
    s = agentsign.agent_signer(kr, h.fingerprint, None)
    try:
        s.sign(b"one")
        h.kill_agent()  # the thread's connection is now dead; the next sign reconnects (and relaunches)
        blob = s.sign(b"two")
    finally:
        s.close()
        h.kill_agent()
    with TrustedKeys([kr.export_public([h.fingerprint], armor=False)]) as keys:
        assert keys.verify(blob).payload == b"two"


def test_agent_error_codes_are_parsed(homes: dict[str, Home]) -> None:
    conn = assuan.connect(str(homes["ed25519"].path))
    try:
        with pytest.raises(assuan.AssuanError) as info:
            conn.transact("SIGKEY 00")  # not a keygrip: IPC parameter error
        assert info.value.code == 280 and "parameter" in info.value.text.lower()
        conn.transact("SIGKEY " + "00" * 20)  # a well-formed grip of no key we hold: refused at PKSIGN
        conn.transact("SETHASH 8 " + "00" * 32)
        with pytest.raises(assuan.AssuanError) as info:
            conn.transact("PKSIGN")
        assert info.value.code == assuan.GPG_ERR_NO_SECKEY
        conn.transact("NOP")  # the connection survives errors
        with pytest.raises(assuan.AssuanError) as info:  # pipelined: the first ERR is raised ...
            conn.pipeline(["SIGKEY 00", "NOP", "GETINFO version"])
        assert info.value.code == 280
        # ... after every answer was read, so the next command gets its own answer, not a stale one
        assert conn.transact("GETINFO version").data.startswith(b"2.")
    finally:
        conn.close()


# ---- signer selection -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsa_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    h = quick_home(tmp_path_factory.mktemp("agent-dsa"), "dsa", "dsa2048")
    yield h
    h.kill_agent()


def _sign_cli(cli, h: Home, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    store = tmp_path / f"store-{len(list(tmp_path.iterdir()))}"
    code, _out, err = cli("sign", "--key", h.fpr, "--gnupghome", str(h.path), "--sigstore", str(store),
                         "--manifest", str(_manifest_file(tmp_path)), "example.com/sel/app:1", *extra, env=env)
    blobs = [p.read_bytes() for p in store.rglob("signature-*")] if store.exists() else []
    return code, err, blobs


def test_signer_gpg_and_auto_paths(homes: dict[str, Home], cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    h = homes["rsa2048"]
    code, err, (blob,) = _sign_cli(cli, h, tmp_path, "--signer", "gpg")
    assert code == 0, err
    assert blob[0] == 0xA3  # gpg's compressed message: the gpg process signed
    code, err, (auto_blob,) = _sign_cli(cli, h, tmp_path)
    assert code == 0 and auto_blob[0] == 0x90  # auto chose the agent
    code, err, (env_blob,) = _sign_cli(cli, h, tmp_path, env={"ATOMICSIG_GPG": "/usr/bin/gpg"})
    assert code == 0 and env_blob[0] == 0xA3  # an explicit gpg binary means the gpg path
    with TrustedKeys([h.public()]) as keys:
        for b in (blob, auto_blob, env_blob):
            assert keys.verify(b).signer == h.fpr


def test_unsupported_key_agent_fails_cleanly_auto_falls_back(dsa_home: Home, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, err, blobs = _sign_cli(cli, dsa_home, tmp_path, "--signer", "agent")
    assert code == 2 and not blobs
    assert "--signer agent cannot use key" in err and "algorithm 17" in err and "Traceback" not in err
    code, err, (blob,) = _sign_cli(cli, dsa_home, tmp_path, "--signer", "auto")
    assert code == 0, err
    assert blob[0] == 0xA3
    with TrustedKeys([dsa_home.public()]) as keys:
        assert keys.verify(blob).signer == dsa_home.fpr
    with pytest.raises(InputError):
        factory.make_signer(dsa_home.keyring, dsa_home.fpr, None, "agent")


def test_auto_falls_back_when_the_agent_signature_does_not_verify(homes: dict[str, Home]) -> None:
    """A wrong public key stands in for an agent answer gpg rejects: auto must hand out gpg's signature."""
    h = homes["ed25519"]
    agent = agentsign.agent_signer(h.keyring, h.fpr, None)
    other = homes["rsa2048"]
    checked = agentsign.CheckedAgentSigner(agent, signers_gpg.GPGSigner(h.keyring, h.fpr), other.public)
    blob = checked.sign(b"payload")
    assert blob[0] == 0xA3 and checked.agent is None  # switched to gpg for good
    assert checked.sign(b"again")[0] == 0xA3
    good = agentsign.CheckedAgentSigner(agentsign.agent_signer(h.keyring, h.fpr, None),
                                        signers_gpg.GPGSigner(h.keyring, h.fpr), h.public)
    try:
        assert good.sign(b"payload")[0] == 0x90 and good.sign(b"again")[0] == 0x90
    finally:
        good.close()


# ---- pure parts -----------------------------------------------------------------------------------------------


def _part(fpr: str, *, primary: bool = False, usage: str = "s", created: int = 100, expires: int | None = None,
          validity: str = "u", token: str = "+") -> SecretKeyPart:
    return SecretKeyPart(fpr * 40, "AB" * 20, 22, "ed25519", created, expires, validity, usage, token, primary)


def test_choose_signing_key_rules() -> None:
    now = 1000
    prim = _part("A", primary=True, usage="sc")
    assert gnupg_agent.choose_signing_key([prim], now) == prim
    assert gnupg_agent.choose_signing_key([_part("A", primary=True, usage="c")], now) is None
    newer, older = _part("B", created=200), _part("C", created=150)
    assert gnupg_agent.choose_signing_key([prim, older, newer], now) == newer
    assert gnupg_agent.choose_signing_key([prim, _part("B", created=150), _part("C", created=150)],
                                        now).fingerprint == "B" * 40  # tie: first listed
    for bad in (_part("D", created=300, validity="r"), _part("D", created=300, validity="e"),
                _part("D", created=300, expires=now - 1), _part("D", created=now + 5),
                _part("D", created=300, token="#"), _part("D", created=300, usage="e")):
        assert gnupg_agent.choose_signing_key([prim, older, bad], now) == older
    assert gnupg_agent.choose_signing_key([prim, _part("F", created=300, expires=now)], now).fingerprint == "F" * 40
    card = _part("E", created=300, token="D2760001240103040006123456780000")
    assert gnupg_agent.choose_signing_key([prim, older, card], now) == card


def test_assuan_escaping_and_line_splitting() -> None:
    raw = bytes(range(256)) * 5 + b"%%\r\n"
    lines = assuan.data_lines(raw)
    assert all(len(ln) <= assuan.LINE_LENGTH and ln.startswith(b"D ") and ln.endswith(b"\n") for ln in lines)
    assert all(b"\n" not in ln[:-1] and b"\r" not in ln for ln in lines)
    assert b"".join(assuan.unescape_data(ln[2:-1]) for ln in lines) == raw
    assert assuan.unescape_data(b"a%25b%0A%0d%zz%4") == b"a%b\n\r%zz%4"
    assert assuan.data_lines(b"") == [b"D \n"]


def test_canonical_sexp() -> None:
    tree = csexp.parse(b"(7:sig-val(5:eddsa(1:r3:\x00\x01\x02)(1:s2:\xff\x00)))\x00")
    assert csexp.value(tree, b"r") == b"\x00\x01\x02" and csexp.value(tree, b"s") == b"\xff\x00"
    assert csexp.find(tree, b"rsa") is None
    assert csexp.parse(b"(3:foo[4:text]3:bar)") == [b"foo", b"bar"]
    for bad in (b"(3:ab)", b"(1:a", b"(01:a)", b"(x:a)", b"(1:a))", b"(" * 40 + b")" * 40):
        with pytest.raises(csexp.SexpError):
            csexp.parse(bad)


def test_mpi_and_eddsa_components() -> None:
    assert build.mpi(b"\x00\x00\x01") == b"\x00\x01\x01"
    assert build.mpi(b"\x80") == b"\x00\x08\x80"
    assert build.mpi(b"\x00") == b"\x00\x00"
    assert build.eddsa_component(b"\x40" + b"\x11" * 32) == b"\x11" * 32
    assert build.eddsa_component(b"\x11" * 31) == b"\x11" * 31
    with pytest.raises(Exception, match="34-byte"):
        build.eddsa_component(b"\x11" * 34)
    with pytest.raises(build.UnsupportedKey):
        build.hash_for(17, "")
    assert build.hash_for(PubkeyAlgo.ECDSA, "nistp384") == HashAlgo.SHA384
    assert build.hash_for(PubkeyAlgo.ECDSA, "nistp521") == HashAlgo.SHA512


def test_framing_matches_rfc4880_hash() -> None:
    """The digest handed to the agent is SHA-256 over data + v4 hashed header + trailer (RFC 4880 §5.2.4)."""
    issuer = build.Issuer(bytes(range(20)), PubkeyAlgo.RSA, HashAlgo.SHA256)
    pending = build.prepare(b"hello", issuer, 0x01020304)
    trailer = b"\x04\xff" + len(pending.hashed_part).to_bytes(4, "big")
    assert pending.digest == hashlib.sha256(b"hello" + pending.hashed_part + trailer).digest()
    blob = build.finish(pending, [b"\x00\x05"])
    msg = openpgp.parse_message(blob)
    sig = msg.signatures[0]
    assert msg.literal == b"hello" and sig.created == 0x01020304 and sig.hash_prefix == pending.digest[:2]
    assert sig.issuer_fingerprint == bytes(range(20)).hex().upper() and sig.mpis == b"\x00\x03\x05"


def test_key_file_signs_through_the_temporary_homes_agent(homes: dict[str, Home], cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    h = homes["nistp256"]
    keyfile = tmp_path / "secret.gpg"
    keyfile.write_bytes(h.keyring.export_secret([h.fpr], armor=False, passphrase=None))
    store = tmp_path / "store"
    code, _, err = cli("sign", "--signer", "agent", "--key", str(keyfile), "--sigstore", str(store),
                       "--manifest", str(_manifest_file(tmp_path)), "example.com/file/app:1")
    assert code == 0, err
    (blob_path,) = store.rglob("signature-1")
    blob = blob_path.read_bytes()
    assert blob[0] == 0x90
    with TrustedKeys([h.public()]) as keys:
        assert keys.verify(blob).signer == h.fpr


@pytest.mark.parametrize("mode", ["auto", "gpg"])
def test_resigning_with_a_signing_subkey_is_idempotent(homes: dict[str, Home], cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       mode: str) -> None:
    """The issuer of a subkey signature is the subkey: a second run must still recognise it as ours ("exists")."""
    h = homes["subkey"]
    store = tmp_path / "store"
    manifest = _manifest_file(tmp_path)
    argv = ["sign", "--key", h.fpr, "--gnupghome", str(h.path), "--sigstore", str(store), "--manifest",
            str(manifest), "--signer", mode, "--json", "example.com/sub/app:1"]
    code, out, err = cli(*argv)
    assert code == 0, err
    if mode == "auto":  # the agent path knows the subkey it signs with and warns about old containers/image
        assert f"signs with its subkey {h.signing_key}" in err
    code, out, err = cli(*argv)
    assert code == 0, err
    assert json.loads(out)["summary"] == {"signed": 0, "exists": 1, "failed": 0}
    assert [p.name for p in store.rglob("signature-*")] == ["signature-1"]
