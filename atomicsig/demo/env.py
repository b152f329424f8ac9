"""Throwaway parts for ``atomicsig demo``: a docker-registry on 127.0.0.1 and tiny OCI images.

Kept inside the package (not in tests/) so the demo works from an installed wheel. Library code: it never
prints; the CLI narrates. Every process started here is in its own session and stopped by PID.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
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


def free_port() -> int:
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


@dataclass
class LocalRegistry:
    """distribution's docker-registry serving plain HTTP on 127.0.0.1:<free port>, storage in ``workdir``."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalRegistry:
        binary = find_tool(*DOCKER_REGISTRY_CANDIDATES)
        self.port = self.port or free_port()
        fsutil.makedirs(self.workdir / "storage", 0o755)
        cfg = self.workdir / "config.yml"
        fsutil.atomic_write(cfg, (
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n").encode())
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Undecided(f"docker-registry exited with {self.proc.returncode}; see {self.workdir}/registry.log")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise Undecided(f"docker-registry did not answer on {self.host} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


def oci_layout(dest: Path, seed: str) -> Path:
    """A minimal single-layer OCI image layout tagged ``latest``; ``seed`` makes its digest unique."""
    blobs = dest / "blobs" / "sha256"
    fsutil.makedirs(blobs, 0o755)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        fsutil.atomic_write(blobs / h, data)
        return h

    content = f"atomicsig demo image {seed}\n".encode()
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/atomicsig-demo")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    raw = tar_buf.getvalue()
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
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
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode())
    return dest


def skopeo(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run skopeo; the caller decides what a non-zero exit means (for a pull under policy it is the answer)."""
    return subprocess.run([find_tool("skopeo"), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def kill_gpg_agent(home: Path) -> None:
    gpgconf.kill_agents(home)
