"""The sync daemon: config, trust, one follower per source, push, backoff, signals, sd_notify, metrics.

Operational contract (docs/sync.md): SIGHUP reloads the config and trusted keys without dropping the persisted
cursors; SIGTERM finishes the record in hand (writes are atomic anyway), saves the cursor and exits 0; network
and disk errors back off exponentially with jitter per source. Logs go through :mod:`logging` (the CLI picks
JSON lines or text, :mod:`atomicsig.logfmt`).

Isolation (issue 12 #4/#6): one peer must never stop a node from syncing with the others. So every source has
its own worker thread, and every pass over a source is bounded (``pass-limit:`` records, bytes, time; each
network wait by ``timeout:``; requests still in flight one ``timeout`` after the time limit are cut): a peer
whose journal never ends, that lies about Content-Length or that trickles bytes costs its own thread a bounded
pass, then yields (budget reached: next pass continues at the saved cursor) or fails (reported, backed off).
Threads share the store, whose writes serialise on its own locks (``flock`` on the digest directory and the
journal, as ``sign -j N`` relies on), and the state file, saved under :attr:`SyncDaemon._state_lock`. The
systemd watchdog is fed only while *every* source is handled: idle between passes, backing off after a reported
failure, or in a pass within its hard bound (pass-limit time + timeout). A pass past that bound by WatchdogSec is
stuck in something not bounded — a lock that never comes, a wedged verifier — and stops the feeding, so systemd
restarts the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from atomicsig.errors import AtomicsigError, InputError
from atomicsig.ops.intake import Intake
from atomicsig.ops.verify import Verifier
from atomicsig.store.directory import DirectoryStore
from atomicsig.sync import config as config_mod
from atomicsig.sync.checkworker import CheckWorker
from atomicsig.sync.follower import Follower, PassReport
from atomicsig.sync.notify import notify, watchdog_interval
from atomicsig.sync.push import Pusher
from atomicsig.sync.source import HTTPSource
from atomicsig.sync.state import SyncState

log = logging.getLogger("atomicsig.sync")
MAX_BACKOFF = 300.0
#: ``sync --once``: at most this many bounded passes per source (``--passes``).
ONCE_PASSES = 10


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
        self.limited = Counter("atomicsig_sync_pass_limited", "Passes that stopped at a pass-limit (more to read)",
                               ["source", "limit"], registry=self.registry)
        self.backoff = Gauge("atomicsig_sync_backoff_seconds", "Delay before the next pass after a failure "
                             "(0 when the last pass succeeded)", ["source"], registry=self.registry)
        self.failing = Gauge("atomicsig_sync_consecutive_failures", "Failed passes in a row", ["source"],
                             registry=self.registry)
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
    """One source's worker: its follower, backoff, pass budget and liveness (read by the watchdog thread)."""

    follower: Follower
    limits: config_mod.PassLimits
    failures: int = 0
    next_at: float = 0.0
    #: Set to end this worker (SIGTERM, or SIGHUP replacing the followers); checked between records.
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: time.monotonic() when the pass in progress started (None between passes).
    busy_since: float | None = None
    #: Fires at the pass's hard deadline: shuts down the source's requests still in flight.
    reaper: threading.Timer | None = None
    records: int = 0
    bytes_at_start: int = 0
    limit_hit: str | None = None
    #: The last pass stopped at this pass-limit with more to read (None: caught up, or it failed).
    limited: str | None = None

    def begin(self, timeout: float) -> None:
        now = time.monotonic()
        self.busy_since = now
        self.records, self.limit_hit = 0, None
        src = self.follower.source
        self.bytes_at_start = src.bytes_read
        # Requests are cut one ``timeout`` after the soft limit: the record in hand may finish, none may hang.
        hard = self.limits.seconds + timeout
        src.deadline = now + hard
        self.reaper = threading.Timer(hard, src.abort_requests)
        self.reaper.daemon = True
        self.reaper.start()

    def end(self) -> None:
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        self.busy_since = None
        self.follower.source.deadline = None

    def progress(self) -> None:
        """A record was handled (the follower's on_progress)."""
        self.records += 1

    def should_stop(self) -> bool:
        """The follower's stop check, between chunks and records: stop requested, or this pass's budget spent."""
        if self.stop.is_set():
            return True
        if self.busy_since is None:
            return False
        lim = self.limits
        if self.records >= lim.records:
            self.limit_hit = "records"
        elif self.follower.source.bytes_read - self.bytes_at_start >= lim.bytes:
            self.limit_hit = "bytes"
        elif time.monotonic() - self.busy_since >= lim.seconds:
            self.limit_hit = "time"
        return self.limit_hit is not None

    def hung(self, now: float, slack: float, timeout: float) -> bool:
        """In a pass longer than its hard bound (pass-limit time + timeout) plus ``slack``: nothing we bound."""
        return self.busy_since is not None and now - self.busy_since > self.limits.seconds + timeout + slack


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
    #: Checks the next bulk batch while this process stores one (atomicsig.sync.checkworker); per key set.
    _checker: CheckWorker | None = None
    _pusher: Pusher | None = None
    _state_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Called once in :meth:`run` after the metrics socket is bound, before READY=1 (privilege drop, --user).
    after_bind: Any = None
    #: A config built in memory (``sync --once --from URL --sigstore DIR --key FILE``): :meth:`load` uses it
    #: instead of reading ``config_path``, which then only names it in messages.
    config: config_mod.SyncConfig | None = None

    # ---- setup ----------------------------------------------------------------------------------------------

    def load(self, parsed: config_mod.SyncConfig | None = None) -> None:
        """(Re)read config and keys; build followers. Cursors come from the state file and are kept. ``parsed``: the
        config file as the caller already read it (the CLI needs its log-format first), so it is read once."""
        cfg = self.config if self.config is not None else parsed if parsed is not None else \
            config_mod.load(self.config_path)
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
        checker = self._checker
        if checker is None or checker.key != (factory, list(blobs)):
            self._checker = CheckWorker(factory, blobs)  # not started until a pack brings a second batch
            if checker is not None:
                checker.close()
        if self.state is None or self.state.path != cfg.state:
            self.state = SyncState.load(cfg.state)
        store = DirectoryStore(cfg.sigstore)
        intake = Intake(store, verifier, cfg.quarantine)
        runs: dict[str, _SourceRun] = {}
        for ep in cfg.sources:
            st = self.state.source(ep.url)
            f = Follower(HTTPSource(ep, cfg.timeout), intake, st, propagate_deletes=cfg.propagate_deletes,
                         save=self.save_state)
            f.checker = self._checker
            prev = self._runs.get(ep.url)
            run = _SourceRun(f, cfg.limits, prev.failures if prev else 0, prev.next_at if prev else 0.0)
            f.should_stop = lambda r=run: self._stop.is_set() or r.should_stop()  # type: ignore[misc]
            f.on_progress = run.progress
            runs[ep.url] = run
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

    @property
    def sources(self) -> list[str]:
        """The URLs of the sources this daemon follows (after :meth:`restrict_to`), in config order."""
        return list(self._runs)

    def restrict_to(self, urls: Iterable[str]) -> None:
        """Follow only these configured sources (``sync --once --from URL``); an URL that is not a configured
        source is an input error, so a typo never reads as "synced nothing, exit 0". Lasts until the next load."""
        wanted = set(urls)
        unknown = wanted - set(self._runs)
        if unknown:
            raise InputError(f"--from {sorted(unknown)[0]} is not a source in {self.config_path}")
        self._runs = {u: r for u, r in self._runs.items() if u in wanted}

    def close(self) -> None:
        """Release the verifier (a temporary GnuPG home for the gpg fallback); :meth:`run` does this on exit,
        a caller of :meth:`run_once` calls it when done."""
        verifier, self._verifier = self._verifier, None
        if verifier is not None and hasattr(verifier, "close"):
            verifier.close()
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.close()

    def save_state(self) -> None:
        """Persist every source's cursor; source threads call this, so one at a time."""
        assert self.state is not None
        with self._state_lock:
            for attempt in range(3):
                try:
                    self.state.save()
                    return
                except RuntimeError:  # another source's thread grew its counters dict mid-copy: copy again
                    if attempt == 2:
                        raise

    # ---- one pass -------------------------------------------------------------------------------------------

    def run_source(self, url: str) -> PassReport | AtomicsigError:
        """One bounded pass over one source; failures are reported and backed off, never raised."""
        run = self._runs[url]
        st = run.follower.st
        assert self.cfg is not None
        run.begin(self.cfg.timeout)
        try:
            rep = run.follower.run_pass()
        except AtomicsigError as exc:
            run.limited = None
            run.failures += 1
            delay = backoff(run.failures)
            run.next_at = time.monotonic() + delay
            st.errors += 1
            repeated = exc.message == st.last_error
            st.last_error, st.last_error_time = exc.message, time.time()
            with contextlib.suppress(AtomicsigError):
                self.save_state()
            self.metrics.errors.labels(url).inc()
            self.metrics.backoff.labels(url).set(round(delay, 2))
            self.metrics.failing.labels(url).set(run.failures)
            # Reported once per distinct error: a peer failing the same way every retry does not flood the log
            # (the counters, metrics and ``sync status`` still count every failure).
            log.log(logging.DEBUG if repeated else logging.ERROR, "pass failed",
                    extra={"fields": {"source": url, "error": exc.message, "retry_in": round(delay, 2),
                                      "failures": run.failures}})
            return exc
        finally:
            run.end()
        if run.failures:
            log.info("source recovered", extra={"fields": {"source": url, "after_failures": run.failures}})
        run.failures = 0
        self.metrics.backoff.labels(url).set(0)
        self.metrics.failing.labels(url).set(0)
        run.limited = limited = run.limit_hit if not rep.caught_up and not run.stop.is_set() \
            and not self._stop.is_set() else None
        # A pass that stopped at its budget continues right away (its own thread: nobody else waits for it).
        run.next_at = time.monotonic() + (0.0 if limited else self.cfg.interval)
        self.metrics.record(url, rep, st.lag_bytes, st.last_success)
        if limited:
            self.metrics.limited.labels(url, limited).inc()
        if rep.new_records or rep.restarted or limited:
            log.info("pass done", extra={"fields": {"source": url, "records": rep.new_records,
                                                    "created": rep.created, "duplicates": rep.duplicates,
                                                    "deleted": rep.deleted, "rejected": rep.rejected,
                                                    "lag_bytes": st.lag_bytes, "limit": limited}})
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
            with contextlib.suppress(AtomicsigError):
                self.save_state()
        if n:
            self.metrics.pushed.inc(n)
            log.info("pushed", extra={"fields": {"upstream": self._pusher.upstream.url, "count": n}})
        return n

    def run_once(self, max_passes: int = ONCE_PASSES) -> dict[str, PassReport | AtomicsigError]:
        """Every source at once (one thread each) until caught up, failed, or ``max_passes`` bounded passes were
        made (a peer whose journal never ends cannot keep ``--once`` running for ever); then the push pass."""
        out: dict[str, PassReport | AtomicsigError] = {}
        crashed: list[BaseException] = []

        def one(url: str) -> None:
            try:
                for _ in range(max_passes):
                    out[url] = res = self.run_source(url)
                    if isinstance(res, AtomicsigError) or not self._runs[url].limited or self._stop.is_set():
                        break
            except BaseException as exc:  # re-raised below, in the caller's thread, as before
                crashed.append(exc)

        threads = [threading.Thread(target=one, args=(u,), name=f"sync-once-{i}", daemon=True)
                   for i, u in enumerate(self._runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if crashed:
            raise crashed[0]
        self.push_pass()
        return {u: out[u] for u in self._runs}

    # ---- forever --------------------------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())

    def stop(self) -> None:
        self._stop.set()

    # ---- workers --------------------------------------------------------------------------------------------

    def _worker(self, url: str, run: _SourceRun) -> None:
        while not (run.stop.is_set() or self._stop.is_set()):
            delay = run.next_at - time.monotonic()
            if delay > 0 and run.stop.wait(delay):
                break
            if self._stop.is_set():
                break
            try:
                self.run_source(url)
            except Exception:  # a bug must not end this source's syncing silently: report, back off, retry
                run.failures += 1
                run.next_at = time.monotonic() + backoff(run.failures)
                self.metrics.errors.labels(url).inc()
                log.exception("pass crashed", extra={"fields": {"source": url, "failures": run.failures}})

    def _start_workers(self) -> None:
        for i, (url, run) in enumerate(self._runs.items()):
            run.stop = threading.Event()
            run.thread = threading.Thread(target=self._worker, args=(url, run), name=f"sync-source-{i}",
                                          daemon=True)
            run.thread.start()

    def _stop_workers(self, wait: float | None = None) -> None:
        """Ask every worker to stop after the record in hand, and wait (each is inside a bounded pass); with
        ``wait`` (exit) give up after that many seconds on a stuck one: its thread dies with the process."""
        for run in self._runs.values():
            run.stop.set()
        end = None if wait is None else time.monotonic() + wait
        for url, run in self._runs.items():
            if run.thread is not None:
                run.thread.join(None if end is None else max(0.0, end - time.monotonic()))
                if run.thread.is_alive():
                    log.error("source did not stop", extra={"fields": {"source": url}})
                run.thread = None

    def stalled(self, now: float | None = None) -> list[str]:
        """Sources whose pass outlived its hard bound (pass-limit time + timeout) by the watchdog period.

        Every network wait of a pass is cut at that bound (HTTPSource.abort_requests), so a pass still running
        after it is stuck in something we do not bound: a store lock that never comes, a wedged verifier.
        """
        slack = 2 * (watchdog_interval() or 0.0)
        timeout = self.cfg.timeout if self.cfg else config_mod.DEFAULT_TIMEOUT
        now = time.monotonic() if now is None else now
        return [u for u, r in list(self._runs.items()) if r.hung(now, slack, timeout)]

    def _watchdog_thread(self) -> None:
        interval = watchdog_interval()
        if not interval:
            return

        def loop() -> None:
            reported: set[str] = set()
            while not self._stop.wait(interval):
                # Claim liveness only while every source is handled: idle, backing off after a reported failure,
                # or making progress. One stuck source withholds WATCHDOG=1 and systemd restarts us.
                stuck = self.stalled()
                if not stuck:
                    notify("WATCHDOG=1")
                    reported.clear()
                elif set(stuck) != reported:
                    reported = set(stuck)
                    log.error("source stalled, watchdog not fed", extra={"fields": {"sources": stuck}})
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
        self._start_workers()
        self._watchdog_thread()
        push_next = 0.0
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    notify("RELOADING=1")
                    # The old followers finish the record in hand before the new ones (same cursors) start.
                    self._stop_workers()
                    try:
                        self.load()
                        if self._pusher is not None:
                            self._pusher.watch()
                    except AtomicsigError as exc:
                        log.error("reload failed, keeping the old config",
                                  extra={"fields": {"error": exc.message}})
                    self._start_workers()
                    notify("READY=1")
                assert self.cfg is not None
                if self._pusher is not None and time.monotonic() >= push_next:
                    self.push_pass()
                    push_next = time.monotonic() + self.cfg.interval
                # Short waits: SIGTERM and SIGHUP are noticed within a second whatever the interval.
                timeout = max(0.05, min(1.0, push_next - time.monotonic()))
                wake = self._pusher.wake if self._pusher is not None else None
                if wake is not None:
                    if wake.wait(timeout):
                        push_next = 0.0
                    wake.clear()
                else:
                    self._stop.wait(timeout)
        finally:
            self._stop.set()
            notify("STOPPING=1")
            assert self.cfg is not None
            self._stop_workers(wait=self.cfg.limits.seconds + self.cfg.timeout + 1)
            if self.state is not None:
                with contextlib.suppress(AtomicsigError):
                    self.save_state()
            if self._pusher is not None:
                self._pusher.stop()
            self.metrics.stop()
            self.close()
            log.info("stopped", extra={"fields": {}})
        return 0


def _gpg_verifier(blobs: list[bytes]) -> Verifier:
    from atomicsig.gnupg.trusted import trusted_keys

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
