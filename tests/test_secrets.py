"""Secrets and privileges (issue #7 item 3 and 6), end to end through the real CLI, gpg and gpg-agent.

Passphrases: while a command runs, every process on the machine is polled (``/proc/*/cmdline`` and
``/proc/*/environ``), and every gpg the command starts is recorded by a wrapper (``$ATOMICSIG_GPG``) that logs its
argv and environment before exec'ing the real gpg — the poll can miss a short gpg, the wrapper cannot. The
distinctive passphrase must appear in no argv, in no environment except that of the atomicsig process we
started with it (the gpg-agent that gpg starts lives on: it must not inherit ``--passphrase-env``'s variable),
and in no output: stdout, stderr, ``--json``, a DEBUG log of every logger, error messages of forced failures.

Files: secret key exports are 0600 whatever the umask; public exports and ``policy apply`` output are 0644
(directories 0755) and owned by root. Privileges: ``atomicsig serve --user`` drops to that user after binding.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.infra import GpgHome, free_port, wait_http

PASS = "Zq7-unicorn-Passphrase-91xK"  # the key's passphrase: must never be seen
WRONG = "Wr0ng-platypus-Passphrase-3vQ"  # a wrong one: must never be seen either
DIGEST = "sha256:" + "ab" * 32
GPG = shutil.which("gpg") or "/usr/bin/gpg"

# Run the CLI with DEBUG logging for every logger (python-gnupg's included) into a file: the most verbose
# logging there is.
_LOGGED_MAIN = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, filename=sys.argv.pop(1)); "
                "from atomicsig.cli import main; sys.exit(main())")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    log: str
    gpg_calls: list[tuple[list[str], dict[str, str]]]
    leaks: list[str] = field(default_factory=list)

    def assert_clean(self, *secrets: str) -> None:
        """No secret in any output, log, gpg argv or environment, or any process seen while running."""
        assert self.gpg_calls, "the gpg wrapper never ran: the test would prove nothing"
        for s in secrets or (PASS, WRONG):
            for name, text in (("stdout", self.stdout), ("stderr", self.stderr), ("log file", self.log)):
                assert s not in text, f"passphrase in {name}:\n{text}"
            for argv, env in self.gpg_calls:
                assert not any(s in a for a in argv), f"passphrase in gpg argv {argv}"
                assert not any(s in v for v in env.values()), \
                    f"passphrase in gpg's environment ({[k for k, v in env.items() if s in v]})"
        assert not self.leaks, "\n".join(self.leaks)


def _scan(secrets: tuple[str, ...], exclude: set[int], marker: bytes | None = None) -> list[str]:
    """Secrets in any process's argv, or in the environment of the processes this run started.

    Environments are only read where ``marker`` (a variable unique to this run, inherited by every descendant,
    gpg-agent included) is present: the atomicsig process of a *concurrent* test legitimately starts with the
    passphrase variable, and must not be blamed on this run. Argv is checked machine-wide.
    """
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        for what in ("cmdline", "environ"):
            if what == "environ" and pid in exclude:
                continue  # the atomicsig process itself was started with the variable, by us
            # Asked *before* the read: a child still between fork and exec is skipped (the 2 ms poll reads it again
            # once it has exec'd), and one that has exec'd cannot go back. Asked after the read, a child that exec'd
            # between read and question was blamed for its pre-exec copy (seen under CPU load, with xdist).
            if what == "environ" and _forked_not_yet_exec(d, exclude):
                continue
            try:
                data = (d / what).read_bytes()
            except OSError:
                continue
            if what == "environ" and marker is not None and marker not in data:
                continue
            for s in secrets:
                if s.encode() in data:
                    with contextlib.suppress(OSError):
                        comm = (d / "comm").read_text().strip()
                        found.append(f"passphrase in /proc/{pid}/{what} ({comm})")
    return found


def _forked_not_yet_exec(d: Path, parents: set[int]) -> bool:
    """A child of the atomicsig process caught between fork() and exec().

    Until exec it is a copy of its parent, and /proc/PID/environ shows the parent's *original* environment block
    (unsetenv only drops the pointer, not the bytes), passphrase variable included; exec replaces it with the
    scrubbed environment atomicsig passes. Such a child still runs the Python executable.
    """
    try:
        ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        exe = os.readlink(d / "exe")
    except (OSError, ValueError, IndexError):
        return False
    return ppid in parents and os.path.realpath(exe) == os.path.realpath(sys.executable)


def _wrapper(tmp: Path) -> tuple[Path, Path]:
    """A gpg that records argv and environment (NUL-separated, one record per call), then runs the real gpg."""
    log = tmp / "gpg-calls.log"
    script = tmp / "gpg-wrapper"
    script.write_text(f"""#!/bin/sh
{{ printf 'ARGV\\0'; printf '%s\\0' "$@"; printf 'ENV\\0'; cat /proc/$$/environ; printf 'END\\0'; }} >> {log}
exec {GPG} "$@"
""")
    script.chmod(0o755)
    return script, log


def _parse_calls(log: Path) -> list[tuple[list[str], dict[str, str]]]:
    if not log.exists():
        return []
    calls = []
    for rec in log.read_bytes().split(b"ARGV\0")[1:]:
        argv_part, _, rest = rec.partition(b"ENV\0")
        env_part = rest.partition(b"END\0")[0]
        argv = [a.decode(errors="replace") for a in argv_part.split(b"\0") if a]
        env = dict(e.decode(errors="replace").partition("=")[::2] for e in env_part.split(b"\0") if e)
        calls.append((argv, env))
    return calls


def run_watched(tmp: Path, args: list[str], *, env: dict[str, str] | None = None, stdin: bytes = b"",
                secrets: tuple[str, ...] = (PASS, WRONG), gpg: Path | None = None,
                homes: tuple[Path, ...] = ()) -> Run:
    """Run ``atomicsig ARGS`` with DEBUG logging, polling /proc until it exits; agents are killed afterwards."""
    wrapper, calls_log = _wrapper(tmp)
    calls_log.unlink(missing_ok=True)
    log = tmp / "debug.log"
    log.unlink(missing_ok=True)
    run_id = f"ATOMICSIG_TEST_RUN={uuid.uuid4().hex}"
    marker = run_id.encode()
    full_env = {**os.environ, "ATOMICSIG_GPG": str(gpg or wrapper), **(env or {}),
                **dict([run_id.split("=", 1)])}
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-c", _LOGGED_MAIN, str(log), *args], stdin=subprocess.PIPE,
                                stdout=o, stderr=e, env=full_env)
        leaks: set[str] = set()
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                leaks.update(_scan(secrets, {proc.pid}, marker))
                time.sleep(0.002)
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        code = proc.wait(timeout=180)
        done.set()
        t.join()
    # The agent outlives the command: its environment is checked after the command is gone, then it is stopped.
    leaks.update(_scan(secrets, set(), marker))
    for h in homes:
        subprocess.run(["gpgconf", "--homedir", str(h), "--kill", "all"], capture_output=True, check=False)
    return Run(code, out.read_text(), err.read_text(), log.read_text() if log.exists() else "",
               _parse_calls(calls_log), sorted(leaks))


@pytest.fixture(scope="module")
def pp_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgHome]:
    """A passphrase-protected ed25519 key (the agent signer supports it, so both signer paths are exercised)."""
    home = GpgHome(tmp_path_factory.mktemp("secrets") / "gnupg", email="pp@example.com", passphrase=PASS).create()
    home.kill_agent()
    yield home
    home.kill_agent()


def _pass_file(tmp: Path, value: str = PASS) -> Path:
    p = tmp / "pass.txt"
    p.write_text(value + "\n")
    p.chmod(0o600)
    return p


PASS_SOURCES = ["file", "env"]


def _pass_args(tmp: Path, how: str, value: str = PASS) -> tuple[list[str], dict[str, str]]:
    if how == "file":
        return ["--passphrase-file", str(_pass_file(tmp, value))], {}
    return ["--passphrase-env", "ATOMICSIG_TEST_PASS"], {"ATOMICSIG_TEST_PASS": value}


# ---- passphrases -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", PASS_SOURCES)
@pytest.mark.parametrize("signer", ["gpg", "agent"])
def test_sign_never_leaks_passphrase(pp_home: GpgHome, tmp_path: Path, how: str, signer: str) -> None:
    pargs, env = _pass_args(tmp_path, how)
    store = tmp_path / "sigstore"
    r = run_watched(tmp_path, ["sign", "--gnupghome", str(pp_home.path), "--key", pp_home.fingerprint,
                               "--sigstore", str(store), "--signer", signer, "--json", *pargs,
                               f"example.com/ns/app:1@{DIGEST}", f"example.com/ns/app:2@{DIGEST}"],
                    env=env, homes=(pp_home.path,))
    assert r.code == 0, r.stderr
    assert [o["status"] for o in json.loads(r.stdout)["results"]] == ["signed", "signed"], r.stdout
    r.assert_clean()


@pytest.mark.parametrize("signer", ["gpg", "agent"])
def test_wrong_passphrase_is_not_echoed(pp_home: GpgHome, tmp_path: Path, signer: str) -> None:
    pargs, env = _pass_args(tmp_path, "env", WRONG)
    r = run_watched(tmp_path, ["sign", "--gnupghome", str(pp_home.path), "--key", pp_home.fingerprint,
                               "--sigstore", str(tmp_path / "s"), "--signer", signer, "--json", *pargs,
                               f"example.com/app:1@{DIGEST}"], env=env, homes=(pp_home.path,))
    assert r.code != 0
    assert "wrong passphrase" in (r.stdout + r.stderr).lower()
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("signature-*"))
    r.assert_clean()


def test_missing_key_error_is_clean(pp_home: GpgHome, tmp_path: Path) -> None:
    pargs, env = _pass_args(tmp_path, "env")
    r = run_watched(tmp_path, ["sign", "--gnupghome", str(pp_home.path), "--key", "nobody@example.com",
                               "--sigstore", str(tmp_path / "s"), *pargs, f"example.com/app:1@{DIGEST}"],
                    env=env, homes=(pp_home.path,))
    assert r.code == 2 and "nobody@example.com" in r.stderr
    r.assert_clean()


def test_crashing_gpg_does_not_relay_the_passphrase(pp_home: GpgHome, tmp_path: Path) -> None:
    """A gpg that dies while signing after echoing its stdin (where the passphrase is) to stderr, the
    passphrase last, where atomicsig picks the line for its error message."""
    wrapper, _ = _wrapper(tmp_path)
    crash = tmp_path / "gpg-crash"
    crash.write_text(f"""#!/bin/sh
case "$*" in *--passphrase-fd*) {wrapper} --version >/dev/null; read -r pw; echo "gpg: Ohhhh jeeee" >&2
    cat >&2; echo "gpg: bad input: $pw" >&2; kill -SEGV $$;;
esac
exec {wrapper} "$@"
""")
    crash.chmod(0o755)
    pargs, env = _pass_args(tmp_path, "file")
    r = run_watched(tmp_path, ["sign", "--gnupghome", str(pp_home.path), "--key", pp_home.fingerprint,
                               "--sigstore", str(tmp_path / "s"), "--signer", "gpg", "--json", *pargs,
                               f"example.com/app:1@{DIGEST}"], env=env, gpg=crash, homes=(pp_home.path,))
    assert r.code == 3, r.stdout + r.stderr
    assert json.loads(r.stdout)["results"][0]["status"] == "failed"
    r.assert_clean()


@pytest.mark.parametrize("how", PASS_SOURCES)
def test_key_lifecycle_never_leaks_passphrase(tmp_path: Path, how: str) -> None:
    """generate → export --secret → import elsewhere → retire (expiry) → retire --revoke, all with a passphrase."""
    home, home2 = tmp_path / "g1", tmp_path / "g2"
    home.mkdir(mode=0o700)
    home2.mkdir(mode=0o700)
    pargs, env = _pass_args(tmp_path, how)
    source = f"passphrase-file: {tmp_path / 'pass.txt'}" if how == "file" else "passphrase-env: ATOMICSIG_TEST_PASS"
    (tmp_path / "signers.yaml").write_text(f"keys:\n  - name: Lifecycle\n    email: life@example.com\n"
                                           f"    algorithm: ed25519\n    {source}\n")
    r = run_watched(tmp_path, ["keys", "generate", "-f", str(tmp_path / "signers.yaml"), "--gnupghome", str(home),
                               "--json"], env=env, homes=(home,))
    assert r.code == 0, r.stderr
    r.assert_clean()
    fpr = json.loads(r.stdout)["keys"][0]["fingerprint"]

    old = os.umask(0)
    try:
        r = run_watched(tmp_path, ["keys", "export", "--secret", fpr, "-o", str(tmp_path / "secret.gpg"),
                                   "--gnupghome", str(home), *pargs], env=env, homes=(home,))
    finally:
        os.umask(old)
    assert r.code == 0, r.stderr
    r.assert_clean()
    assert stat.S_IMODE((tmp_path / "secret.gpg").stat().st_mode) == 0o600

    r = run_watched(tmp_path, ["keys", "import", str(tmp_path / "secret.gpg"), "--gnupghome", str(home2), "--json",
                               *pargs], env=env, homes=(home2,))
    assert r.code == 0, r.stderr
    assert fpr in json.loads(r.stdout)["imported"]
    r.assert_clean()

    r = run_watched(tmp_path, ["keys", "retire", fpr, "--gnupghome", str(home2), *pargs], env=env, homes=(home2,))
    assert r.code == 0, r.stderr
    r.assert_clean()
    r = run_watched(tmp_path, ["keys", "retire", "--revoke", fpr, "-o", str(tmp_path / "rev.asc"),
                               "--gnupghome", str(home), *pargs], env=env, homes=(home,))
    assert r.code == 0, r.stderr
    r.assert_clean()


def test_passphrase_env_is_scrubbed_for_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit level: once a source names a variable, child_env() drops it and reading takes it out of os.environ."""
    from atomicsig.gnupg import passphrase

    monkeypatch.setenv("ATOMICSIG_UNIT_PASS", PASS)
    src = passphrase.PassphraseSource(env="ATOMICSIG_UNIT_PASS")
    assert "ATOMICSIG_UNIT_PASS" not in passphrase.child_env()
    assert src.read() == PASS
    assert "ATOMICSIG_UNIT_PASS" not in os.environ


# ---- file modes ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgHome]:
    home = GpgHome(tmp_path_factory.mktemp("plain") / "gnupg", email="plain@example.com").create()
    yield home
    home.kill_agent()


def _cli(*args: str, umask: int) -> subprocess.CompletedProcess[str]:
    def pre() -> None:
        os.umask(umask)
    return subprocess.run([sys.executable, "-m", "atomicsig", *args], capture_output=True, text=True,
                          preexec_fn=pre, timeout=120)  # preexec only sets the umask


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_export_modes_ignore_umask(plain_home: GpgHome, tmp_path: Path, umask: int) -> None:
    sec, pub = tmp_path / "sec.gpg", tmp_path / "pub.gpg"
    r = _cli("keys", "export", "--secret", plain_home.fingerprint, "-o", str(sec), "--gnupghome",
             str(plain_home.path), umask=umask)
    assert r.returncode == 0, r.stderr
    r = _cli("keys", "export", plain_home.fingerprint, "-o", str(pub), "--gnupghome", str(plain_home.path),
             umask=umask)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert b"PRIVATE" not in pub.read_bytes()


def test_secret_export_over_world_readable_file(plain_home: GpgHome, tmp_path: Path) -> None:
    """An existing 0644 file is replaced (atomically) by a 0600 one: the secret never sits in a readable inode."""
    sec = tmp_path / "sec.gpg"
    sec.write_text("old")
    sec.chmod(0o644)
    ino = sec.stat().st_ino
    r = _cli("keys", "export", "--secret", plain_home.fingerprint, "-o", str(sec), "--gnupghome",
             str(plain_home.path), umask=0)
    assert r.returncode == 0, r.stderr
    st = sec.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_ino != ino and sec.read_bytes() != b"old"


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_policy_apply_files_root_owned_0644(plain_home: GpgHome, tmp_path: Path, umask: int) -> None:
    key = plain_home.export_public(tmp_path / "k.gpg")
    (tmp_path / "p.yaml").write_text(f"""\
default: reject
keys:
  k: {{file: {key}}}
scopes:
  registry.example.com/prod:
    signed-by: k
    lookaside: https://sigs.example.com/sigstore
""")
    root = tmp_path / "root"
    r = _cli("policy", "apply", "-f", str(tmp_path / "p.yaml"), "--root", str(root), umask=umask)
    assert r.returncode == 0, r.stderr
    written = [p for p in (root / "etc").rglob("*")]
    files = [p for p in written if p.is_file()]
    assert {p.name for p in files} >= {"policy.json"}
    assert any(p.parent.name == "registries.d" for p in files)
    assert any(p.suffix == ".gpg" for p in files)
    for p in written:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (0, 0), p
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(st.st_mode) == want, f"{p}: {oct(stat.S_IMODE(st.st_mode))}"


# ---- privilege drop --------------------------------------------------------------------------------------------


def _ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():  # every thread, not only the main one
        for line in (task / "status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[f"{task.name}:{key}"] = [int(x) for x in val.split()]
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_serve_drops_to_user(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="atomicsig-privdrop-"))  # pytest's tmp is 0700 root: nobody can't enter
    store = top / "store"
    sig = store / f"ns/app@sha256={'cd' * 32}" / "signature-1"
    sig.parent.mkdir(parents=True)
    sig.write_bytes(b"\x89fake")
    for p in [top, *store.rglob("*"), store]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    token = tmp_path / "token"  # root-only: read before the drop, as a LoadCredential file would be
    token.write_text("t0ken-for-root-only\n")
    token.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "atomicsig", "serve", "--sigstore", str(store), "--listen",
                             f"127.0.0.1:{port}", "--token-file", str(token), "--user", "nobody"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", ok=(200,))
        ids = _ids(proc.pid)
        assert ids
        for k, v in ids.items():
            if k.endswith("Uid"):
                assert v == [nobody.pw_uid] * 4, (k, v)
            elif k.endswith("Gid"):
                assert v == [nobody.pw_gid] * 4, (k, v)
            else:
                assert v == [], (k, v)
        r = requests.get(f"http://127.0.0.1:{port}/ns/app@sha256={'cd' * 32}/signature-1", timeout=5)
        assert r.status_code == 200 and r.content == b"\x89fake"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        shutil.rmtree(top, ignore_errors=True)
    assert "running as nobody" in err.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_serve_refuses_unknown_user(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    r = subprocess.run([sys.executable, "-m", "atomicsig", "serve", "--sigstore", str(tmp_path / "store"),
                        "--listen", f"127.0.0.1:{free_port()}", "--user", "no-such-user-atomicsig"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no such user" in r.stderr


def test_drop_privileges_in_child(tmp_path: Path) -> None:
    """The library call, in a forked child: ids, groups, HOME, and no way back to root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    code = ("import os, json; from atomicsig.privdrop import drop_privileges; d = drop_privileges('nobody'); "
            "ok = True\ntry:\n    os.setuid(0)\nexcept PermissionError:\n    ok = False\n"
            "print(json.dumps([os.getresuid(), os.getresgid(), os.getgroups(), os.environ['HOME'], ok, d.changed]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    resuid, resgid, groups, home, regained, changed = json.loads(r.stdout)
    nobody = pwd.getpwnam("nobody")
    assert resuid == [nobody.pw_uid] * 3 and resgid == [nobody.pw_gid] * 3 and groups == []
    assert home == nobody.pw_dir and regained is False and changed is True
