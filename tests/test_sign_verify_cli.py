"""``atomicsig sign`` / ``verify`` end to end on the CLI: batch semantics, exit codes, one-line errors,
nothing half-written (issue #2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from atomicsig.format import payload
from tests.infra import GpgHome, Registry, free_port, push_image

HEX = "9" * 64
DIG = "sha256:" + HEX


def files_under(p: Path) -> list[Path]:
    return [x for x in p.rglob("signature-*") if x.is_file()] if p.exists() else []


def one_line_error(err: str) -> bool:
    """Exactly one error line: a global ``atomicsig: error:`` or a per-image ``FAILED`` batch line."""
    errors = [ln for ln in err.splitlines() if ln.startswith(("atomicsig: error: ", "FAILED "))]
    return len(errors) == 1 and "Traceback" not in err and len(err.splitlines()) <= 3


@pytest.fixture
def env(signer: GpgHome) -> dict[str, str]:
    return {"GNUPGHOME": str(signer.path)}


def test_sign_by_digest_exists_and_force(cli, signer: GpgHome, signer_pub: Path, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    args = ("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--json", f"quay.io/ns/app:1@{DIG}")
    code, out, err = cli(*args, env=env)
    assert code == 0, err
    res = json.loads(out)
    assert res["summary"] == {"signed": 1, "exists": 0, "failed": 0}
    r = res["results"][0]
    assert (r["identity"], r["digest"]) == ("quay.io/ns/app:1", DIG)
    assert r["location"] == str(store / f"ns/app@sha256={HEX}/signature-1")
    code, out, _ = cli(*args, env=env)
    assert code == 0 and json.loads(out)["summary"] == {"signed": 0, "exists": 1, "failed": 0}
    # --force signs again; ed25519 is deterministic, so within the same second the blob can be byte-identical
    # and is then not stored twice.
    code, out, _ = cli(*args, "--force", env=env)
    assert code == 0 and json.loads(out)["summary"]["failed"] == 0
    blobs = [p.read_bytes() for p in files_under(store)]
    assert len(blobs) == len(set(blobs)) in (1, 2)
    # verify by digest; the tag-claiming signature is accepted for a pull by digest (matchRepoDigestOrExact)
    code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--json",
                         f"quay.io/ns/app@{DIG}", env=env)
    assert code == 0, out + err
    code, out, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--match", "exact",
                       f"quay.io/ns/app@{DIG}", env=env)
    assert code == 1 and "does not match" in out


def test_batch_from_file_one_bad(cli, signer: GpgHome, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    refs = [f"quay.io/team{i % 3}/app{i}:v{i}@sha256:{i:064x}" for i in range(1, 30)]
    bad = "quay.io/Team/App:1@" + DIG
    lst = tmp_path / "refs.txt"
    lst.write_text("# batch\n" + "\n".join([*refs[:15], bad, *refs[15:]]) + "\n\n")
    code, out, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--from-file", str(lst),
                         "--json", "-j", "4", env=env)
    assert code == 2, err
    res = json.loads(out)
    assert res["summary"] == {"signed": 29, "exists": 0, "failed": 1}
    failed = [r for r in res["results"] if r["status"] == "failed"]
    assert failed[0]["input"] == bad and "lowercase" in failed[0]["error"]
    assert len(files_under(store)) == 29
    ok = {r["identity"] for r in res["results"] if r["status"] == "signed"}
    assert ok == {r.split("@")[0] for r in refs}


def test_input_errors(cli, signer: GpgHome, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    cases = [
        (("sign", "--key", signer.fingerprint, "--sigstore", str(store), "quay.io/Bad:1"), 2, "lowercase"),
        (("sign", "--key", "nobody@example.com", "--sigstore", str(store), f"quay.io/a@{DIG}"), 2, "no secret key"),
        (("sign", "--key", signer.fingerprint, "--sigstore", "s3://x", f"quay.io/a@{DIG}"), 2, "unsupported"),
        (("verify", "--key", str(tmp_path / "missing.gpg"), "--sigstore", str(store), f"quay.io/a@{DIG}"), 2,
         "does not exist"),
    ]
    for args, code_expected, reason in cases:
        code, _out, err = cli(*args, env=env)
        assert code == code_expected, (args, err)
        assert reason in err and one_line_error(err), err
    assert not store.exists()


def test_missing_gpg(cli, signer: GpgHome, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), f"quay.io/a@{DIG}",
                       env={"GNUPGHOME": str(signer.path), "ATOMICSIG_GPG": "/nonexistent"})
    assert code == 3 and "gpg not found" in err and one_line_error(err), err
    assert not store.exists()


def test_unwritable_sigstore(cli, signer: GpgHome, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "afile"
    f.write_text("keep")
    for where in (f, f / "below"):
        code, _out, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(where), f"quay.io/a@{DIG}",
                             env=env)
        assert code == 3, err
        assert "FAILED" in err and "Traceback" not in err
    assert f.read_text() == "keep" and list(tmp_path.iterdir()) == [f]


def _craft(signer: GpgHome, data: bytes, *extra: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(signer.path), "--batch", "--local-user", signer.fingerprint,
                           *extra, "--sign"], input=data, capture_output=True, check=True).stdout


def test_verify_rejects_bad_blobs(cli, signer: GpgHome, signer_pub: Path, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = json.loads(payload.build("quay.io/ns/app:1", DIG))
    good["critical"]["extra"] = "x"
    cases = {
        "corrupt": (b"\xa3\x01garbage", "corrupt|truncated|invalid|rejected|unexpected"),
        "armored": (_craft(signer, payload.build("quay.io/ns/app:1", DIG), "--armor"), "ASCII-armored"),
        "extra-critical": (_craft(signer, json.dumps(good).encode()), "unknown key 'extra'"),
        "other-digest": (_craft(signer, payload.build("quay.io/ns/app:1", "sha256:" + "1" * 64)), "digest"),
        "other-identity": (_craft(signer, payload.build("quay.io/ns/other:1", DIG)), "does not match"),
    }
    for name, (blob, reason) in cases.items():
        store = tmp_path / name
        d = store / f"ns/app@sha256={HEX}"
        d.mkdir(parents=True)
        (d / "signature-1").write_bytes(blob)
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--json",
                             f"quay.io/ns/app:1@{DIG}", env=env)
        assert code == 1, (name, out, err)
        img = json.loads(out)["images"][0]
        assert not img["accepted"]
        import re

        assert re.search(reason, img["signatures"][0]["reason"]), (name, img)
    # no signatures at all (an existing store: a --sigstore that does not exist is an input error, exit 2)
    (tmp_path / "empty").mkdir()
    code, out, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(tmp_path / "empty"),
                       f"quay.io/ns/app:1@{DIG}", env=env)
    assert code == 1 and "no signature exists" in out


@pytest.mark.slow
def test_registry_errors(cli, signer: GpgHome, env, registry: Registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    sign = ("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--tls-verify=false")
    # unreachable
    code, _, err = cli(*sign, f"127.0.0.1:{free_port()}/a:1", env=env)
    assert code == 3 and "cannot reach" in err, err
    # 404
    code, _, err = cli(*sign, f"{registry.host}/does/not/exist:1", env=env)
    assert code == 3 and "not found" in err, err
    # 401
    auth = Registry(tmp_path / "authreg", htpasswd=("u", "p")).start()
    try:
        push_image(auth.host, "priv/app:1", "priv", tmp_path, creds=("u", "p"))
        (tmp_path / "empty-auth.json").write_text('{"auths": {}}')
        code, _, err = cli(*sign, "--authfile", str(tmp_path / "empty-auth.json"), f"{auth.host}/priv/app:1",
                           env=env)
        assert code == 3 and ("401" in err or "credentials" in err), err
    finally:
        auth.stop()
    assert files_under(store) == []
    # and a tag that exists signs the digest the registry serves
    digest = push_image(registry.host, "ok/app:1", "cli-ok", tmp_path)
    code, out, err = cli(*sign, "--json", f"{registry.host}/ok/app:1", env=env)
    assert code == 0, err
    assert json.loads(out)["results"][0]["digest"] == digest
