"""Push mode: signatures made on this node go to the configured upstream's signature extension API.

The pusher follows the *local* journal with its own persisted cursor (the same crash-safety as the follower:
resume from the cursor, 409 "already there" counts as success), and a watchdog (inotify) observer on the
journal only wakes it up early; a timer pass catches anything a lost event missed.

Request (SPEC §6, OpenShift extension): ``PUT /extensions/v2/<repo>/signatures/<digest>`` with JSON
``{"schemaVersion": 2, "name": "<digest>@<32 hex>", "type": "atomic", "content": <base64>}`` and a bearer
token; 201 created, 409 duplicate — spoken by :class:`atomicsig.extension.ExtensionStore`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from atomicsig import fsutil
from atomicsig.errors import RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.store.journal import HEADER_LEN, Journal, iter_lines, parse_line
from atomicsig.sync.config import Endpoint
from atomicsig.sync.state import SourceState

log = logging.getLogger("atomicsig.sync")


class Pusher:
    def __init__(self, root: Path, upstream: Endpoint, state: SourceState) -> None:
        self.journal = Journal(root)
        self.root = root
        self.upstream = upstream
        self.st = state
        self.wake = threading.Event()
        self._observer: Any = None

    def put(self, repo: str, digest: str, blob: bytes) -> bool:
        """Upload one signature; True if created, False if the upstream already had it (dedup or 409)."""
        from atomicsig.format.reference import Reference
        from atomicsig.store.extension import ExtensionStore, StaticTokenClient

        client = StaticTokenClient(self.upstream.url, self.upstream.token(), verify=self.upstream.tls_verify)
        store = ExtensionStore(client)
        try:
            return store.append(Reference(client.host, repo), digest, blob).created
        except RegistryError as exc:
            if exc.status == 409:
                return False
            raise

    def run_pass(self) -> int:
        """Push every local ``add`` record after the cursor. Returns how many were uploaded."""
        if not self.journal.path.exists():
            return 0
        epoch, data = self.journal.read_from(self.st.offset)
        if epoch != self.st.epoch:
            self.st.restart()
            self.st.epoch = epoch
            epoch, data = self.journal.read_from(0)
        base = max(self.st.offset, HEADER_LEN)
        pushed = 0
        for line, end in iter_lines(data, base):
            rec = parse_line(line, end)
            if rec.op == "add":
                try:  # confined like every store read: a planted link or FIFO is never pushed to a peer
                    blob = fsutil.read_regular_file(self.root, str(rec.path), MAX_SIGNATURE_SIZE)
                except (FileNotFoundError, NotADirectoryError):
                    blob = b""  # renumbered or pruned since; a later record names its new place
                except fsutil.UnsafeFileError as exc:
                    log.warning("not pushing %s: %s", rec.path, exc.message)
                    blob = b""
                if blob and self.put(rec.path.repo, rec.path.digest, blob):
                    pushed += 1
                    self.st.synced += 1
            self.st.offset, self.st.seq = end, rec.seq
        return pushed

    def watch(self) -> None:
        """Start an inotify watch on the journal's directory that sets :attr:`wake` on changes."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if str(event.src_path).endswith("journal") or str(getattr(event, "dest_path", "")).endswith(
                        "journal"):
                    wake.set()

        self.journal.meta.mkdir(parents=True, exist_ok=True)
        try:
            obs = self._start(Observer(), _Handler())
        except OSError as exc:
            # inotify instances are a per-user limit (fs.inotify.max_user_instances, often 128) that other
            # programs may have used up. Polling the one small directory once a second still wakes the pusher;
            # exiting would stop pushing altogether.
            from watchdog.observers.polling import PollingObserver

            log.warning("inotify unavailable; polling the journal instead",
                        extra={"fields": {"error": str(exc)}})
            obs = self._start(PollingObserver(timeout=1.0), _Handler())
        self._observer = obs

    def _start(self, obs: Any, handler: Any) -> Any:
        obs.schedule(handler, str(self.journal.meta), recursive=False)
        obs.daemon = True
        obs.start()
        return obs

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
