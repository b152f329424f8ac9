"""Throwaway parts for ``atomicsig demo``: a docker-registry on 127.0.0.1, tiny OCI images, skopeo.

Kept inside the package (not in tests/) so the demo works from an installed wheel; the test suite reuses these
same helpers (tests/infra.py) rather than keeping a second copy, so what the demo proves is what the tests run.
Library code: it never prints; the CLI narrates. Every process started here is in its own session and stopped
by PID (its process group), never by name.
"""

from __future__ import annotations

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
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import Undecided
from atomicsig.gnupg import gpgconf

DOCKER_REGISTRY_CANDIDATES = ("docker-registry", "registry")


_next_port = itertools.count()


#: Environment variable naming the first of 500 ports this process (and its children) take turns with.
PORT_BLOCK_ENV = "ATOMICSIG_PORT_BLOCK"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The kernel's pick (bind to 0) is free only until this socket closes, and two processes running these helpers in
    parallel could be handed the same port before either server binds it. So a process given a block
    (``ATOMICSIG_PORT_BLOCK=N``: ports N..N+499, chosen by whoever runs several of them at once — the test suite's
    conftest gives each worker its own, below the kernel's ephemeral range 32768+ that outgoing connections use)
    takes ports round-robin from it; anyone else, the demo included, gets the kernel's pick.
    """
    block = os.environ.get(PORT_BLOCK_ENV, "")
    if block.isdigit() and 1024 <= int(block) <= 65535 - 500:
        base = int(block)
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


def find_tool(*names: str) -> str:
    """The first of ``names`` on PATH (or /usr/bin), else Undecided naming what to install."""
    for n in names:
        found = shutil.which(n) or (f"/usr/bin/{n}" if os.access(f"/usr/bin/{n}", os.X_OK) else None)
        if found:
            return found
    raise Undecided(f"{names[0]} not found", hint=f"install {names[0]} to run the demo")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL after 5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_http(url: str, timeout: float = 15.0, ok: tuple[int, ...] = (200, 401), *,
              proc: subprocess.Popen[bytes] | None = None, context: ssl.SSLContext | None = None) -> None:
    """Poll ``url`` until it answers with a status in ``ok``; Undecided if ``proc`` exits or time runs out.

    ``context`` is for an https probe of a server the caller started with its own certificate."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Undecided(f"the server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:  # noqa: S310 - scheme checked
                if resp.status in ok:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise Undecided(f"{url} did not answer within {timeout:.0f}s: {last}")


@dataclass
class LocalRegistry:
    """distribution's docker-registry serving plain HTTP on 127.0.0.1:<free port>, storage in ``workdir``.

    ``htpasswd`` (user, password) turns on Basic auth, ``token`` ({realm, service, issuer, rootcertbundle}) the
    Docker token auth; ``delete`` lets clients delete manifests. The demo uses none of them; the tests do."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    htpasswd: tuple[str, str] | None = None
    token: dict[str, str] | None = None
    delete: bool = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _auth_config(self) -> str:
        if self.htpasswd:
            user, pw = self.htpasswd
            hpath = self.workdir / "htpasswd"
            # The password goes in on stdin (-i), never on argv.
            out = subprocess.run([find_tool("htpasswd"), "-Bin", user], input=pw.encode(), capture_output=True,
                                 check=True).stdout
            fsutil.atomic_write(hpath, out, 0o600)
            return f"auth:\n  htpasswd:\n    realm: atomicsig\n    path: {hpath}\n"
        if self.token:
            t = self.token
            return (f"auth:\n  token:\n    realm: {t['realm']}\n    service: {t['service']}\n"
                    f"    issuer: {t['issuer']}\n    rootcertbundle: {t['rootcertbundle']}\n")
        return ""

    def start(self, timeout: float = 20.0) -> LocalRegistry:
        binary = find_tool(*DOCKER_REGISTRY_CANDIDATES)
        self.port = self.port or free_port()
        fsutil.makedirs(self.workdir / "storage", 0o755)
        cfg = self.workdir / "config.yml"
        delete = "  delete:\n    enabled: true\n" if self.delete else ""
        fsutil.atomic_write(cfg, (
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n{delete}"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{self._auth_config()}").encode())
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        try:
            # 401: an auth-enabled registry is up and asking for credentials.
            wait_http(f"http://{self.host}/v2/", timeout, ok=(200, 401), proc=self.proc)
        except Undecided as exc:
            self.stop()
            raise Undecided(f"docker-registry did not start on {self.host}: {exc.message}; "
                            f"see {self.workdir}/registry.log") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None


def tar_layer(seed: str) -> bytes:
    """An uncompressed, reproducible layer tar with one small file named and filled after ``seed``."""
    content = f"atomicsig demo image {seed}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"etc/atomicsig-{hashlib.sha256(seed.encode()).hexdigest()[:8]}")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def oci_layout(dest: Path, seed: str, *, tag: str = "latest", arch: str = "amd64") -> Path:
    """A minimal single-layer OCI image layout for linux/``arch`` tagged ``tag``; ``seed`` makes its digest
    unique (it names the layer's only file and fills it)."""
    blobs = dest / "blobs" / "sha256"
    fsutil.makedirs(blobs, 0o755)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        fsutil.atomic_write(blobs / h, data)
        return h

    raw = tar_layer(seed)
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}},
                        sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + put(layer),
                    "size": len(layer)}]}).encode()
    mh = put(manifest)
    fsutil.atomic_write(dest / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    fsutil.atomic_write(dest / "index.json", json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + mh,
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode())
    return dest


def skopeo(args: list[str], *, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run skopeo (``env`` added to ours); the caller decides what a non-zero exit means (for a pull under
    policy it is the answer)."""
    return subprocess.run([find_tool("skopeo"), *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **env} if env else None)


def kill_gpg_agent(home: Path) -> None:
    gpgconf.kill_agents(home)
