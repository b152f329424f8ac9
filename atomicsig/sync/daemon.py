"""The sync daemon: config, trust, one follower per source, push, backoff, signals, sd_notify, metrics.

Operational contract (docs/sync.md): SIGHUP reloads the config and trusted keys without dropping the persisted
cursors; SIGTERM finishes the record in hand (writes are atomic anyway), saves the cursor and exits 0; network
and disk errors back off exponentially with jitter per source, so one dead peer never stalls the others.
Logs are JSON lines on stdout (configured by the CLI); the library only uses :mod:`logging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtomicsigError, InputError
from ..lookaside import DirectoryStore
from ..verify import Verifier
from . import config as config_mod
from .follower import Follower, PassReport
from .intake import Intake
from .notify import notify, watchdog_interval
from .push import Pusher
from .source import HTTPSource
from .state import SyncState

log = logging.getLogger("atomicsig.sync")
MAX_BACKOFF = 300.0


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, msg and the record's ``fields`` (never secrets)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower(),
                               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}) or {})
        return json.dumps(out, sort_keys=False, default=str)


def backoff(failures: int, base: float = 1.0) -> float:
    """Exponential backoff with full jitter in [d/2, d], d = base·2^(n-1) capped at MAX_BACKOFF."""
    d = min(MAX_BACKOFF, base * 2 ** max(0, failures - 1))
    return d / 2 + random.random() * d / 2  # noqa: S311 (jitter, not crypto)


class Metrics:
    """Prometheus metrics on a private registry, served by prometheus_client's own small HTTP server."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.synced = Counter("atomicsig_sync_synced", "Signatures stored from a source", ["source"],
                              registry=self.registry)
        self.rejected = Counter("atomicsig_sync_rejected", "Signatures refused", ["source", "reason"],
                                registry=self.registry)
        self.errors = Counter("atomicsig_sync_errors", "Failed passes", ["source"], registry=self.registry)
        self.lag_bytes = Gauge("atomicsig_sync_lag_bytes", "Journal bytes not yet read", ["source"],
                               registry=self.registry)
        self.last_success = Gauge("atomicsig_sync_last_success_timestamp_seconds",
                                  "Time of the last complete pass", ["source"], registry=self.registry)
        self.pushed = Counter("atomicsig_sync_pushed", "Signatures uploaded upstream", registry=self.registry)
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        self._server = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            server = self._server[0] if isinstance(self._server, tuple) else None
            if server is not None:
                server.shutdown()
            self._server = None

    def record(self, url: str, rep: PassReport, lag: int | None, success: float | None) -> None:
        if rep.created:
            self.synced.labels(url).inc(rep.created)
        for reason, n in rep.rejected.items():
            self.rejected.labels(url, reason).inc(n)
        if lag is not None:
            self.lag_bytes.labels(url).set(lag)
        if success:
            self.last_success.labels(url).set(success)


@dataclass
class _SourceRun:
    follower: Follower
    failures: int = 0
    next_at: float = 0.0


@dataclass
class SyncDaemon:
    config_path: str
    verifier_factory: Any = None  # (key blobs) -> Verifier; default nativeverify.trusted_keys
    cfg: config_mod.SyncConfig | None = None
    state: SyncState | None = None
    metrics: Metrics = field(default_factory=Metrics)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reload: threading.Event = field(default_factory=threading.Event)
    _runs: dict[str, _SourceRun] = field(default_factory=dict)
    _verifier: Any = None
    _pusher: Pusher | None = None
    _last_progress: float = field(default_factory=time.monotonic)
    #: Called once in :meth:`run` after the metrics socket is bound, before READY=1 (privilege drop, --user).
    after_bind: Any = None

    # ---- setup ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read config and keys; build followers. Cursors come from the state file and are kept."""
        cfg = config_mod.load(self.config_path)
        blobs = cfg.key_blobs()
        if cfg.sources and not blobs:
            raise InputError("no trusted keys configured")
        factory = self.verifier_factory or _gpg_verifier
        verifier: Verifier = factory(blobs)
        if cfg.sources and not verifier.fingerprints:
            raise InputError(f"none of the trusted-keys files in {self.config_path} holds an OpenPGP key")
        old = self._verifier
        self._verifier = verifier
        if old is not None and hasattr(old, "close"):
            old.close()
        if self.state is None or self.state.path != cfg.state:
            self.state = SyncState.load(cfg.state)
        store = DirectoryStore(cfg.sigstore)
        intake = Intake(store, verifier, cfg.quarantine)
        runs: dict[str, _SourceRun] = {}
        for ep in cfg.sources:
            st = self.state.source(ep.url)
            f = Follower(HTTPSource(ep), intake, st, propagate_deletes=cfg.propagate_deletes,
                         save=self.state.save, should_stop=self._stop.is_set, on_progress=self._progress)
            prev = self._runs.get(ep.url)
            runs[ep.url] = _SourceRun(f, prev.failures if prev else 0, prev.next_at if prev else 0.0)
        self._runs = runs
        if self._pusher is not None:
            self._pusher.stop()
            self._pusher = None
        if cfg.push is not None:
            self._pusher = Pusher(cfg.sigstore, cfg.push, self.state.push)
        self.cfg = cfg
        log.info("config loaded", extra={"fields": {"config": self.config_path, "sources": len(cfg.sources),
                                                    "trusted": sorted(verifier.fingerprints),
                                                    "sigstore": str(cfg.sigstore)}})

    def _progress(self) -> None:
        self._last_progress = time.monotonic()

    # ---- one pass -------------------------------------------------------------------------------------------

    def run_source(self, url: str) -> PassReport | AtomicsigError:
        run = self._runs[url]
        st = run.follower.st
        try:
            rep = run.follower.run_pass()
        except AtomicsigError as exc:
            run.failures += 1
            delay = backoff(run.failures)
            run.next_at = time.monotonic() + delay
            st.errors += 1
            st.last_error, st.last_error_time = exc.message, time.time()
            with contextlib.suppress(AtomicsigError):
                assert self.state is not None
                self.state.save()
            self.metrics.errors.labels(url).inc()
            log.error("pass failed", extra={"fields": {"source": url, "error": exc.message,
                                                       "retry_in": round(delay, 2), "failures": run.failures}})
            return exc
        run.failures = 0
        assert self.cfg is not None
        run.next_at = time.monotonic() + self.cfg.interval
        self.metrics.record(url, rep, st.lag_bytes, st.last_success)
        if rep.new_records or rep.restarted:
            log.info("pass done", extra={"fields": {"source": url, "records": rep.new_records,
                                                    "created": rep.created, "duplicates": rep.duplicates,
                                                    "deleted": rep.deleted, "rejected": rep.rejected,
                                                    "lag_bytes": st.lag_bytes}})
        return rep

    def push_pass(self) -> int | AtomicsigError:
        if self._pusher is None:
            return 0
        try:
            n = self._pusher.run_pass()
        except AtomicsigError as exc:
            self._pusher.st.errors += 1
            self._pusher.st.last_error = exc.message
            log.error("push failed", extra={"fields": {"upstream": self._pusher.upstream.url,
                                                       "error": exc.message}})
            return exc
        finally:
            assert self.state is not None
            with contextlib.suppress(AtomicsigError):
                self.state.save()
        if n:
            self.metrics.pushed.inc(n)
            log.info("pushed", extra={"fields": {"upstream": self._pusher.upstream.url, "count": n}})
        return n

    def run_once(self) -> dict[str, PassReport | AtomicsigError]:
        out = {url: self.run_source(url) for url in list(self._runs)}
        self.push_pass()
        return out

    # ---- forever --------------------------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())

    def stop(self) -> None:
        self._stop.set()

    def _watchdog_thread(self) -> None:
        interval = watchdog_interval()
        if not interval:
            return
        limit = interval * 2

        def loop() -> None:
            while not self._stop.wait(interval):
                # Only claim liveness while the loop moves; a hung pass lets systemd restart us.
                if time.monotonic() - self._last_progress < limit + (self.cfg.interval if self.cfg else 0):
                    notify("WATCHDOG=1")
        threading.Thread(target=loop, name="sd-watchdog", daemon=True).start()

    def run(self) -> int:
        assert self.cfg is not None
        if self.cfg.metrics:
            self.metrics.serve(*self.cfg.metrics)
        if self.after_bind is not None:
            self.after_bind()
        if self._pusher is not None:
            self._pusher.watch()
        notify("READY=1")
        self._watchdog_thread()
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    notify("RELOADING=1")
                    try:
                        self.load()
                        if self._pusher is not None:
                            self._pusher.watch()
                    except AtomicsigError as exc:
                        log.error("reload failed, keeping the old config",
                                  extra={"fields": {"error": exc.message}})
                    notify("READY=1")
                now = time.monotonic()
                for url, run in list(self._runs.items()):
                    if self._stop.is_set():
                        break
                    if run.next_at <= now:
                        self.run_source(url)
                self.push_pass()
                self._progress()
                waits = [r.next_at - time.monotonic() for r in self._runs.values()]
                assert self.cfg is not None
                timeout = max(0.05, min(waits, default=self.cfg.interval))
                wake = self._pusher.wake if self._pusher is not None else None
                if wake is not None:
                    wake.wait(timeout)
                    wake.clear()
                else:
                    self._stop.wait(timeout)
        finally:
            notify("STOPPING=1")
            if self.state is not None:
                with contextlib.suppress(AtomicsigError):
                    self.state.save()
            if self._pusher is not None:
                self._pusher.stop()
            self.metrics.stop()
            if self._verifier is not None and hasattr(self._verifier, "close"):
                self._verifier.close()
            log.info("stopped", extra={"fields": {}})
        return 0


def _gpg_verifier(blobs: list[bytes]) -> Verifier:
    from ..nativeverify import trusted_keys

    return trusted_keys(blobs)


def status(config_path: str) -> dict[str, Any]:
    """What ``atomicsig sync status`` shows: the persisted cursors and counters, without contacting anyone."""
    cfg = config_mod.load(config_path)
    state = SyncState.load(cfg.state)
    now = time.time()
    out: dict[str, Any] = {"sigstore": str(cfg.sigstore), "state": str(cfg.state), "sources": []}
    for ep in cfg.sources:
        st = state.sources.get(ep.url)
        row: dict[str, Any] = {"url": ep.url, "kind": ep.kind}
        if st is None:
            row.update(never_synced=True)
        else:
            row.update(epoch=st.epoch, offset=st.offset, seq=st.seq, remote_size=st.remote_size,
                       lag_bytes=st.lag_bytes, synced=st.synced, duplicates=st.duplicates, deleted=st.deleted,
                       rejected=st.rejected, errors=st.errors, last_error=st.last_error,
                       last_success=st.last_success,
                       seconds_since_success=None if st.last_success is None else round(now - st.last_success, 1))
        out["sources"].append(row)
    if cfg.push is not None:
        out["push"] = {"url": cfg.push.url, "offset": state.push.offset, "pushed": state.push.synced,
                       "last_error": state.push.last_error}
    return out
