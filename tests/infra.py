"""Real test parts: a docker-registry on 127.0.0.1, OCI images pushed with skopeo, throwaway GnuPG homes.

No mocks: every helper here starts or drives the real program a user's node would run. Processes are started
in their own process group and killed by PID on teardown.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


_next_port = itertools.count()


def free_port() -> int:
    """A 127.0.0.1 TCP port that is free now. A port the kernel picks (bind to 0) is free only until this
    socket closes, and two pytest-xdist workers could be handed the same one before either server binds it; so a
    worker (``PYTEST_XDIST_WORKER=gwN``) takes ports round-robin from its own block of 500 below the kernel's
    ephemeral range (32768+), which no other worker and no outgoing connection uses."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        base = 20000 + 500 * (int(worker[2:]) % 24)
        for _ in range(500):
            port = base + next(_next_port) % 500
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0, ok: tuple[int, ...] = (200, 401)) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=1, verify=False)
            if r.status_code in ok:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up: {last}")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@dataclass
class Registry:
    """A real docker-registry (distribution 2.8) on 127.0.0.1, optionally with htpasswd or token auth."""

    workdir: Path
    htpasswd: tuple[str, str] | None = None
    token: dict[str, str] | None = None  # {"realm","service","issuer","rootcertbundle"}
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd:
            user, pw = self.htpasswd
            hpath = self.workdir / "htpasswd"
            out = subprocess.run(["htpasswd", "-Bbn", user, pw], capture_output=True, check=True).stdout
            hpath.write_bytes(out)
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {hpath}\n"
        elif self.token:
            t = self.token
            auth = (f"auth:\n  token:\n    realm: {t['realm']}\n    service: {t['service']}\n"
                    f"    issuer: {t['issuer']}\n    rootcertbundle: {t['rootcertbundle']}\n")
        cfg = self.workdir / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{auth}"
        )
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(cfg)], stdout=log, stderr=log,
                                     start_new_session=True)
        wait_http(f"http://{self.host}/v2/")
        return self

    def stop(self) -> None:
        if self.proc:
            kill_group(self.proc)
            self.proc = None


def _tar_layer(seed: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"atomicsig test layer {seed}\n".encode()
        info = tarfile.TarInfo(f"etc/atomicsig-{hashlib.sha256(seed.encode()).hexdigest()[:8]}")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_oci_layout(dest: Path, seed: str, tag: str = "latest", arch: str = "amd64") -> Path:
    """A minimal, valid single-layer OCI image layout; ``seed`` makes the digest unique."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return h

    raw = _tar_layer(seed)
    layer = gzip.compress(raw, mtime=0)
    layer_h = put(layer)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}},
                        sort_keys=True).encode()
    config_h = put(config)
    mani = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + config_h, "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": "sha256:" + layer_h, "size": len(layer)}]}).encode()
    mani_h = put(mani)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + mani_h,
         "size": len(mani), "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return dest


def skopeo(*args: str, check: bool = True, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
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
        from atomicsig.gpg import Keyring

        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        kr = Keyring(str(self.path))
        key = kr.generate(name="Test Signer", email=self.email, comment=None, algorithm=self.algorithm,
                          expire="0", passphrase=self.passphrase)
        self.fingerprint = key.fingerprint
        return self

    def export_public(self, dest: Path, armor: bool = False) -> Path:
        from atomicsig.gpg import Keyring

        dest.write_bytes(Keyring(str(self.path)).export_public([self.fingerprint], armor=armor))
        return dest

    def kill_agent(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "all"], capture_output=True, check=False)


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
    import yaml

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
        import yaml

        self.sigstore.mkdir(parents=True, exist_ok=True)
        doc = {"sigstore": str(self.sigstore), "sources": [{"url": u} for u in sources],
               "trusted-keys": [str(self.pub)], "interval": 0.2, **extra}
        self.config.write_text(yaml.safe_dump(doc))
        return self.config

    def blobs(self, digest_hex: str, repo: str) -> list[bytes]:
        from atomicsig.lookaside import read_dir

        d = self.sigstore / f"{repo}@sha256={digest_hex}"
        return [s.blob for s in read_dir(d)] if d.is_dir() else []

    def state(self) -> dict[str, Any]:
        return json.loads((self.sigstore / ".atomicsig" / "sync-state.json").read_text())
