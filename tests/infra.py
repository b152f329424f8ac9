"""Real test parts: a docker-registry on 127.0.0.1, OCI images pushed with skopeo, throwaway GnuPG homes, and the
one fake-server helper (FakeServer) every scripted peer, registry front and token service is built on.

No mocks: every helper here starts or drives the real program a user's node would run, and fakes speak real HTTP
on 127.0.0.1. Processes are started in their own process group and killed by PID on teardown. The registry
launcher, image builder, free port, skopeo runner and gpg-agent stop are atomicsig.demo.env's (one copy, shipped
for ``atomicsig demo``). Test files import shared helpers from here, never from each other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from atomicsig.demo import env as demo_env
from atomicsig.format import payload
from atomicsig.gnupg.keyring import Keyring
from atomicsig.openpgp.constants import PubkeyAlgo

# One implementation of the registry launcher, the OCI image builder, the free-port helper, the process-group
# stop and the gpg-agent stop: the demo's (atomicsig/demo/env.py), which must ship in the wheel. Re-exported here
# under the names the tests use.
free_port = demo_env.free_port
kill_group = demo_env.stop_process
make_oci_layout = demo_env.oci_layout


def wait_http(url: str, timeout: float = 15.0, ok: tuple[int, ...] = (200, 401), *,
              cafile: str | Path | None = None) -> None:
    """:func:`atomicsig.demo.env.wait_http`; an https URL is probed against ``cafile`` (the test's own CA or
    self-signed certificate), else without certificate checks."""
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if cafile is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    demo_env.wait_http(url, timeout, ok, context=context)


@dataclass
class Registry(demo_env.LocalRegistry):
    """A real docker-registry (distribution 2.8) on 127.0.0.1, optionally with htpasswd or token auth (the demo's
    launcher, with deletes enabled)."""

    delete: bool = True


def skopeo(*args: str, check: bool = True, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """:func:`atomicsig.demo.env.skopeo`; ``check`` turns a non-zero exit into a test failure."""
    proc = demo_env.skopeo(list(args), env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def insecure_policy(path: Path) -> Path:
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def push_image(registry_host: str, repo_tag: str, seed: str, workdir: Path, *,
               creds: tuple[str, str] | None = None) -> str:
    """Build an OCI image and push it with ``skopeo copy``; returns the manifest digest in the registry."""
    layout = make_oci_layout(Path(tempfile.mkdtemp(dir=workdir, prefix="oci-")), seed)
    policy = insecure_policy(workdir / "insecure-policy.json")
    digest_file = workdir / f"digest-{hashlib.sha256(repo_tag.encode()).hexdigest()[:12]}"
    args = ["--policy", str(policy), "copy", "--quiet", "--dest-tls-verify=false",
            "--digestfile", str(digest_file), f"oci:{layout}:latest", f"docker://{registry_host}/{repo_tag}"]
    if creds:
        args[3:3] = ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    skopeo(*args)
    return digest_file.read_text().strip()


@dataclass
class GpgHome:
    """A throwaway GnuPG home with one generated signing key (no passphrase unless given)."""

    path: Path
    email: str = "signer@example.com"
    algorithm: str = "ed25519"
    passphrase: str | None = None
    fingerprint: str = ""

    def create(self) -> GpgHome:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        kr = Keyring(str(self.path))
        key = kr.generate(name="Test Signer", email=self.email, comment=None, algorithm=self.algorithm,
                          expire="0", passphrase=self.passphrase)
        self.fingerprint = key.fingerprint
        return self

    def sign_image(self, identity: str, digest: str, *, timestamp: int | None = None) -> bytes:
        """A real gpg signature by this home's key over the simple-signing payload for ``identity`` at ``digest``."""
        return Keyring(str(self.path)).sign(payload.build(identity, digest, timestamp=timestamp), self.fingerprint,
                                            None)

    def export_public(self, dest: Path, armor: bool = False) -> Path:
        dest.write_bytes(Keyring(str(self.path)).export_public([self.fingerprint], armor=armor))
        return dest

    def kill_agent(self) -> None:
        demo_env.kill_gpg_agent(self.path)


def signed_by_policy(path: Path, keyfile: Path, scope: str | None = None, identity: dict | None = None,
                     default_reject: bool = True) -> Path:
    req: dict = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(keyfile)}
    if identity:
        req["signedIdentity"] = identity
    pol: dict = {"default": [{"type": "reject" if default_reject else "insecureAcceptAnything"}]}
    if scope:
        pol["transports"] = {"docker": {scope: [req]}}
    else:
        pol["default"] = [req]
    path.write_text(json.dumps(pol, indent=2))
    return path


def registries_d(dirpath: Path, lookaside: str, scope: str | None = None) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    section = {"lookaside": lookaside}
    doc = {"docker": {scope: section}} if scope else {"default-docker": section}
    (dirpath / "test.yaml").write_text(yaml.safe_dump(doc))
    return dirpath


def skopeo_pull(ref: str, policy: Path, regd: Path, workdir: Path, *, creds: tuple[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """What a node does: copy the image out of the registry under a policy. returncode 0 = accepted."""
    dest = Path(tempfile.mkdtemp(dir=workdir, prefix="pulled-"))
    args = ["--policy", str(policy), "--registries.d", str(regd), "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{ref}", f"dir:{dest}"]
    if creds:
        args[6:6] = ["--src-creds", f"{creds[0]}:{creds[1]}"]
    return skopeo(*args, check=False)


def podman_pull(ref: str, policy: Path, regd: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """podman pull with an isolated root/runroot and vfs storage."""
    root = workdir / "podman-root"
    runroot = workdir / "podman-run"
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(_registries_conf(workdir))}
    # podman reads registries.d only from its system/user locations; a containers.conf can't move it, so we
    # point HOME at a directory whose .config/containers/registries.d is ours (user dir wins, SPEC §4.1).
    home = workdir / "podman-home"
    (home / ".config" / "containers").mkdir(parents=True, exist_ok=True)
    target = home / ".config" / "containers" / "registries.d"
    if target.exists() or target.is_symlink():
        if target.is_symlink() or target.is_file():
            target.unlink()
        else:
            shutil.rmtree(target)
    shutil.copytree(regd, target)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return subprocess.run(["podman", "--root", str(root), "--runroot", str(runroot), "--storage-driver", "vfs",
                           "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                           "pull", "--tls-verify=false", "--signature-policy", str(policy), "-q", ref],
                          capture_output=True, text=True, env=env, timeout=180)


def assert_pulled(proc: subprocess.CompletedProcess[str], rejection: str | None) -> None:
    """A pull (skopeo_pull, podman_pull) was accepted (``rejection`` None), or refused with ``rejection`` in what
    the client printed."""
    if rejection is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and rejection in proc.stderr, proc.stderr


@dataclass
class PolicyRoot:
    """A node tree written by ``policy apply --root`` (``root``) and the directory holding its YAML and keys
    (``work``); ``policy`` and ``regd`` are what skopeo and podman are pointed at."""

    root: Path
    work: Path

    @property
    def policy(self) -> Path:
        return self.root / "etc/containers/policy.json"

    @property
    def regd(self) -> Path:
        return self.root / "etc/containers/registries.d"


def apply_policy(policy_yaml: Path, root: Path) -> None:
    """``policy apply -f policy_yaml --root root --keypaths-under-root`` (the keyPath values point at the keyrings
    inside ``root``; all else is byte for byte what a node gets); it must succeed."""
    from atomicsig.cli import cli
    from atomicsig.cli.common import run_main

    code = run_main(cli, ["policy", "apply", "-f", str(policy_yaml), "--root", str(root), "--keypaths-under-root"])
    assert code == 0, f"policy apply of {policy_yaml} failed"


def _registries_conf(workdir: Path) -> Path:
    p = workdir / "registries.conf"
    if not p.exists():
        p.write_text('unqualified-search-registries = []\n')
    return p


@contextlib.contextmanager
def running(reg: Registry) -> Iterator[Registry]:
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cli_runner() -> Any:
    """A click CliRunner that keeps stderr apart from stdout on every supported click (8.1 needs the flag)."""
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2: always separate, flag removed
        return CliRunner()


@contextlib.contextmanager
def serve_sigstore(root: Path, *extra: str) -> Iterator[str]:
    """``atomicsig serve`` of ``root`` on a free 127.0.0.1 port (own process group); yields its base URL."""
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "atomicsig", "serve", "--sigstore", str(root), "--listen",
                             f"127.0.0.1:{port}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", ok=(200,))
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(proc)


@contextlib.contextmanager
def nginx(root: Path, workdir: Path) -> Iterator[tuple[str, Path]]:
    """A real nginx serving ``root`` as static files on a free 127.0.0.1 port (own process group); yields its base
    URL and access log. What a lookaside published by a plain web server looks like to nodes, sync and mirror."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "access.log"
    conf = workdir / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 tmp dirs
    conf.write_text(f"""{user} daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {log}; client_body_temp_path {workdir}/cb; proxy_temp_path {workdir}/p;
  fastcgi_temp_path {workdir}/f; uwsgi_temp_path {workdir}/u; scgi_temp_path {workdir}/s;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/", ok=(200, 403, 404))
        yield f"http://127.0.0.1:{port}", log
    finally:
        kill_group(proc)


def push_index(registry_host: str, repo_tag: str, workdir: Path,
               arches: Sequence[str] = ("amd64", "arm64")) -> tuple[str, dict[str, str]]:
    """Build a real multi-platform OCI index (one image per linux/``arch``) and push it with ``skopeo copy --all``;
    returns the index digest and {platform: instance digest}."""
    layout = Path(tempfile.mkdtemp(dir=workdir, prefix="oci-index-"))
    entries = []
    for arch in arches:
        make_oci_layout(layout, f"{repo_tag}-{arch}", arch=arch)
        m = json.loads((layout / "index.json").read_text())["manifests"][0]
        entries.append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    h = hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / h).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + h, "size": len(index),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    policy = insecure_policy(workdir / "insecure-policy.json")
    skopeo("--policy", str(policy), "copy", "--all", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest",
           f"docker://{registry_host}/{repo_tag}")
    return "sha256:" + h, {f"linux/{e['platform']['architecture']}": str(e["digest"]) for e in entries}


@dataclass
class SyncNode:
    """One node of a sync test: a sigstore and an ``atomicsig sync`` config trusting ``pub``."""

    dir: Path
    pub: Path
    name: str = ""

    @property
    def sigstore(self) -> Path:
        return self.dir / "sigstore"

    @property
    def config(self) -> Path:
        return self.dir / "sync.yaml"

    def configure(self, sources: list[str], **extra: Any) -> Path:
        self.sigstore.mkdir(parents=True, exist_ok=True)
        doc = {"sigstore": str(self.sigstore), "sources": [{"url": u} for u in sources],
               "trusted-keys": [str(self.pub)], "interval": 0.2, **extra}
        self.config.write_text(yaml.safe_dump(doc))
        return self.config

    def blobs(self, digest_hex: str, repo: str) -> list[bytes]:
        from atomicsig.store.sigdir import read_dir

        d = self.sigstore / f"{repo}@sha256={digest_hex}"
        return [s.blob for s in read_dir(d)] if d.is_dir() else []

    def state(self) -> dict[str, Any]:
        return json.loads((self.sigstore / ".atomicsig" / "sync-state.json").read_text())


NodeT = TypeVar("NodeT", bound=SyncNode)


def sync_nodes(base: Path, pub: Path, cls: type[NodeT]) -> Callable[[str], NodeT]:
    """``make(name)``: a node of class ``cls`` under ``base/name`` trusting ``pub``, its sigstore created (what a
    sync test's ``node`` fixture returns)."""

    def make(name: str) -> NodeT:
        n = cls(base / name, pub, name)
        n.sigstore.mkdir(parents=True, exist_ok=True)
        return n
    return make


def sync_once(cli: Any, n: SyncNode, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    """``atomicsig sync --once`` of node ``n`` through the ``cli`` fixture: (exit code, its JSON log lines)."""
    code, out, err = cli("sync", "--config", str(n.config), "--once", *extra)
    logs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    sys.stderr.write(out + err)  # shown by pytest when a test fails
    return code, logs


def sigstore_contents(root: Path) -> dict[str, list[bytes]]:
    """digest dir → blobs, read as c/image reads (stops at the first gap); asserts there is no gap."""
    from atomicsig.store.sigdir import read_dir

    out: dict[str, list[bytes]] = {}
    for d in sorted(root.rglob("*@sha256=*")):
        if not d.is_dir() or ".atomicsig" in d.parts:
            continue
        sigs = read_dir(d)
        files = [p for p in d.iterdir() if p.name.startswith("signature-")]
        assert len(files) == len(sigs), f"gap or stray file in {d}: {sorted(p.name for p in d.iterdir())}"
        # ``.tmp-*`` may be left by a kill -9 (fsutil unlinks them in a ``finally`` that never runs). Readers ignore
        # them (c/image and atomicsig open ``signature-N`` by name) and writers sweep stale ones
        # (fsutil.sweep_stale_temps, tests/test_recovery.py); anything else besides signatures is an error.
        stray = [p.name for p in d.iterdir() if not p.name.startswith(("signature-", ".tmp-"))]
        assert not stray, f"unexpected files in {d}: {stray}"
        out[str(d.relative_to(root))] = [s.blob for s in sigs]
    return out


# ---- GnuPG homes made with gpg itself (test_agent_signer, test_memsign) --------------------------------------------

PASSPHRASE = "pw 7c1e%41 x\\y'q"  # a space, a '%' that looks like an escape, quotes: exercises D-line escaping


def gpg_batch(home: Path, *args: str) -> str:
    """Run gpg on a throwaway home for key setup only (empty passphrase; never a real secret in argv)."""
    proc = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
                           "--passphrase", "", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def primary_fpr(home: Path, uid: str) -> str:
    out = gpg_batch(home, "--with-colons", "--list-secret-keys", uid)
    return next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))


def subkey_fprs(home: Path, fpr: str) -> list[str]:
    out = gpg_batch(home, "--with-colons", "--list-secret-keys", fpr).splitlines()
    return [out[i + 1].split(":")[9] for i, ln in enumerate(out) if ln.startswith("ssb:")]


class Home:
    """A GnuPG home with one secret key: its primary fingerprint and the (sub)key expected to sign."""

    def __init__(self, path: Path, fpr: str, signing_key: str, pubkey_algo: int) -> None:
        self.path, self.fpr, self.signing_key, self.pubkey_algo = path, fpr, signing_key, pubkey_algo

    @property
    def keyring(self) -> Keyring:
        return Keyring(str(self.path))

    def public(self) -> bytes:
        return self.keyring.export_public([self.fpr], armor=False)

    def kill_agent(self) -> None:
        demo_env.kill_gpg_agent(self.path)


def quick_home(base: Path, name: str, algo: str) -> Home:
    path = base / name
    path.mkdir(mode=0o700)
    uid = f"{name} <{name}@example.com>"
    gpg_batch(path, "--quick-gen-key", uid, algo, "sign", "0")
    fpr = primary_fpr(path, uid)
    algo_id = int(gpg_batch(path, "--with-colons", "--list-secret-keys", fpr).split("sec:")[1].split(":")[2])
    return Home(path, fpr, fpr, algo_id)


def certify_only_home(path: Path, *subkeys: tuple[str, str, str], apart: float = 0.0) -> tuple[str, list[str]]:
    """A GnuPG home at ``path`` whose ed25519 primary key only certifies, with ``subkeys`` (algorithm, usage,
    expiry) added in order, ``apart`` seconds apart; returns the primary's fingerprint and the subkeys'."""
    path.mkdir(mode=0o700)
    gpg_batch(path, "--quick-gen-key", "Sub <sub@example.com>", "ed25519", "cert", "0")
    fpr = primary_fpr(path, "sub@example.com")
    for i, (algo, usage, expire) in enumerate(subkeys):
        if i:
            time.sleep(apart)
        gpg_batch(path, "--quick-add-key", fpr, algo, usage, expire)
    return fpr, subkey_fprs(path, fpr)


def assert_skopeo_standalone_verify(home: Home, workdir: Path, sign: Callable[[bytes], bytes],
                                    **manifest_extra: Any) -> None:
    """Sign a small OCI manifest's payload with ``sign``; real ``skopeo standalone-verify`` must accept it for its
    identity and refuse it for another. skopeo 1.9 compares the fingerprint it is given with the signing
    (sub)key's, so ``home.signing_key`` is the one passed."""
    from atomicsig.format import manifest

    man = workdir / "manifest.json"
    man.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": "sha256:" + "ab" * 32, "size": 2}, "layers": [],
                               **manifest_extra}))
    digest = manifest.digest(man.read_bytes())
    sig = workdir / "sig"
    sig.write_bytes(sign(payload.build("registry.example.com/ns/app:1", digest)))
    env = {"GNUPGHOME": str(home.path)}
    res = skopeo("standalone-verify", str(man), "registry.example.com/ns/app:1", home.signing_key, str(sig), env=env)
    assert res.stdout.startswith("Signature verified") and digest in res.stdout
    bad = skopeo("standalone-verify", str(man), "registry.example.com/ns/app:2", home.signing_key, str(sig),
                 env=env, check=False)
    assert bad.returncode != 0


def primary_key_homes(base: Path, signer: GpgHome) -> dict[str, Home]:
    """One home per key type whose primary key signs (the session's Ed25519 signer, RSA-2048, NIST P-256)."""
    return {
        "ed25519": Home(signer.path, signer.fingerprint, signer.fingerprint, PubkeyAlgo.EDDSA),
        "rsa2048": quick_home(base, "rsa", "rsa2048"),
        "nistp256": quick_home(base, "ecdsa", "nistp256"),
    }


class CmdlineWatch:
    """Scan every process's /proc/PID/cmdline in the background for a secret while the test runs."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.hits: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if self.secret in fh.read():
                            self.hits.append(pid)
                except OSError:
                    continue
            self.scans += 1

    def __enter__(self) -> CmdlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- a node's policy tree as ``policy apply --root`` writes it (test_policy_apply, test_policy_e2e) ---------------

POLICY = "etc/containers/policy.json"
REGD = "etc/containers/registries.d"
REGFILE = f"{REGD}/atomicsig.yaml"
KEYDIR = "etc/pki/containers"
STATE = "var/lib/atomicsig/policy-state.json"

LEGACY_HEADER = "# Managed by atomicsig (atomicsig policy apply); local edits are overwritten.\n"


def legacy_layout(root: Path) -> list[str]:
    """Rewrite a node applied by this version into what atomicsig wrote before content-addressed keyrings and the
    single registries.d file: one ``atomicsig-<scope>.yaml`` per scope, ``atomicsig-<names>.gpg`` keyrings,
    policy.json naming those, and a state record owning them. Returns the per-scope file names."""
    sections = yaml.safe_load((root / REGFILE).read_text())["docker"]
    files, names = [], []
    for scope, section in sections.items():
        name = "atomicsig-" + scope.replace("/", "-").replace(":", "_").replace("@", "_").replace("*", "_") + ".yaml"
        (root / REGD / name).write_text(LEGACY_HEADER + yaml.safe_dump({"docker": {scope: section}}))
        files.append(f"/{REGD}/{name}")
        names.append(name)
    (root / REGFILE).unlink()
    text = (root / POLICY).read_text()
    for kr in (root / KEYDIR).glob("atomicsig-*.gpg"):
        legacy = kr.name.rsplit("-", 1)[0] + ".gpg"
        kr.rename(kr.with_name(legacy))
        text = text.replace(kr.name, legacy)
        files.append(f"/{KEYDIR}/{legacy}")
    (root / POLICY).write_text(text)
    state = json.loads((root / STATE).read_text())
    state["files"] = sorted(files)
    for hashes in ("sha256", "scope_sha256"):  # kept only since issue 12 #9
        state.pop(hashes, None)
    (root / STATE).write_text(json.dumps(state, indent=2) + "\n")
    for p in root.rglob("*.atomicsig-bak.*"):
        p.unlink()
    return names


# ---- small real HTTP servers on 127.0.0.1: the one fake-server helper, and a runner for atomicsig's own WSGI apps ---


@dataclass
class Reply:
    """One scripted HTTP answer. A body without a Content-Length header gets one, unless ``chunked`` (then it is
    sent with ``Transfer-Encoding: chunked``, i.e. without a length). A declared Content-Length that the body
    does not match is sent as is, and the connection is closed after it (a truncated or lying answer)."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    chunked: bool = False


@dataclass
class Hit:
    """One request a fake server received (before it answered)."""

    at: float
    method: str
    path: str
    range: str


class FakeRequest(http.server.BaseHTTPRequestHandler):
    """The request as a fake's :meth:`FakeServer.handle` sees it: ``command``, ``route`` (the decoded path without
    the query), ``query``, ``headers``, :meth:`body`; ``wfile`` for a handler that writes a raw answer itself."""

    protocol_version = "HTTP/1.1"
    server: _FakeHTTPServer
    route: str
    query: str
    _body: bytes | None = None

    def log_message(self, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # A TLS ClientHello (0x16) to a plain-HTTP fake has no newline to end a request line: close, as a real
        # plain-HTTP server's client sees it, instead of waiting for one.
        if self.server.fake.tls is None:
            with contextlib.suppress(OSError):
                if self.request.recv(1, socket.MSG_PEEK) == b"\x16":
                    return
        super().handle()

    def joined_headers(self) -> dict[str, str]:
        """The request headers, a repeated one (skopeo sends several ``Accept``) joined with ", " as WSGI does."""
        out: dict[str, str] = {}
        for k, v in self.headers.items():
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    def body(self) -> bytes:
        """The request body (Content-Length or chunked), read once."""
        if self._body is None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                self._body = b"".join(parts)
            else:
                self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def _serve(self) -> None:
        path, _, self.query = self.path.partition("?")
        self.route = urllib.parse.unquote(path)
        fake = self.server.fake
        fake.hits.append(Hit(time.monotonic(), self.command, self.route, self.headers.get("Range", "")))
        script = fake.routes.get(self.route)
        if script:
            reply: Reply | None = script[min(fake.count(self.route) - 1, len(script) - 1)]
        else:
            reply = fake.handle(self)
        if reply is not None:
            self.reply(reply)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

    def reply(self, reply: Reply) -> None:
        """Send ``reply`` (see :class:`Reply`); the body is not sent to a HEAD request."""
        headers = list(reply.headers.items() if isinstance(reply.headers, Mapping) else reply.headers)
        declared = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
        chunks: Iterable[bytes] = [reply.body] if isinstance(reply.body, bytes) else reply.body
        if declared is None and not reply.chunked:
            chunks = [b"".join(chunks)]
            headers.append(("Content-Length", str(len(chunks[0]))))
        if reply.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        self.send_response(reply.status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        for chunk in chunks:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if reply.chunked else chunk)
                sent += len(chunk)
        if reply.chunked:
            self.wfile.write(b"0\r\n\r\n")
        elif declared is not None and sent != declared:
            self.close_connection = True


class _FakeHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), FakeRequest)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.fake.tls is not None:  # the handshake in the connection's thread, not the accept loop
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.fake.tls[0]), str(self.fake.tls[1]))
            try:
                request = context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is what several fakes provoke


class FakeServer:
    """A scripted peer, registry or token service for tests: real HTTP/1.1 (optionally TLS) on a free 127.0.0.1
    port, one thread per connection, started and stopped by ``with``.

    ``script(path, *replies)`` answers requests for ``path`` in turn (the last reply repeats); other paths go to
    :meth:`handle`, which a fake overrides (the default is 404). A handler returns a :class:`Reply`, or writes a
    raw answer to ``req.wfile`` itself and returns None (a trickled header, a connection held open until
    ``release`` is set, which happens when the server stops). ``hits`` records every request."""

    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls
        self.routes: dict[str, list[Reply]] = {}
        self.hits: list[Hit] = []
        self.release = threading.Event()
        self.url = ""
        self._httpd: _FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def script(self, path: str, *replies: Reply) -> None:
        self.routes[path] = list(replies)

    def count(self, path: str) -> int:
        """How many requests for ``path`` arrived."""
        return sum(1 for h in self.hits if h.path == path)

    def handle(self, req: FakeRequest) -> Reply | None:
        return Reply(404, b"not found")

    def __enter__(self) -> Self:
        self._httpd = _FakeHTTPServer(self)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, as a registry reference names it."""
        return self.url.split("://", 1)[1]


def call_wsgi(app: Callable[..., Iterable[bytes]], req: FakeRequest) -> Reply:
    """Answer ``req`` with a WSGI ``app`` (e.g. atomicsig's own SignatureServer inside a fake registry)."""
    body = req.body() if req.command not in ("GET", "HEAD") else b""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.command, "PATH_INFO": req.route, "QUERY_STRING": req.query, "REQUEST_URI": req.path,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(req.server.server_address[1]),
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": req.client_address[0], "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": req.headers.get("Content-Type", ""), "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "https" if req.server.fake.tls else "http", "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}
    for k, v in req.joined_headers().items():
        if k.lower() not in ("content-type", "content-length"):
            environ["HTTP_" + k.upper().replace("-", "_")] = v
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        answer["status"], answer["headers"] = int(status.split(" ", 1)[0]), headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Reply(answer["status"], data, answer["headers"])


@contextlib.contextmanager
def run_wsgi(app: Callable[..., Iterable[bytes]], *, port: int | None = None, tls: tuple[str, str] | None = None,
             threads: int = 8) -> Iterator[str]:
    """Run one of atomicsig's own WSGI apps on its production server (cheroot, ``serve.server.make_server``) at
    127.0.0.1 in a thread; yields the base URL; stops the server afterwards. Fakes use :class:`FakeServer`."""
    from atomicsig.serve.server import make_server

    port = port or free_port()
    server = make_server(app, f"127.0.0.1:{port}", tls_cert=tls[0] if tls else None,
                         tls_key=tls[1] if tls else None, threads=threads)
    server.prepare()
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", ok=(200, 401, 404))
        yield base
    finally:
        server.stop()
        t.join(timeout=10)
