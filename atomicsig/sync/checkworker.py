"""One long-lived worker process that runs the trust check of the bulk first sync's next batch while this process
stores the current one (issue 15 item 4, docs/performance.md "First sync").

Per batch of 512 the check (:func:`atomicsig.ops.intake.check_blob`, Python, CPU) and the store
(:meth:`Intake.store_checked`, mostly kernel time) each take about as long; a thread cannot overlap them (the GIL),
a process can. The worker is started lazily (only when a pack brings a second full batch: the one-new-signature
case never spawns a process), once per ``sync`` process, with the ``spawn`` context (the follower has threads: never
fork), and rebuilds the verifier once from the trusted key *bytes* with the same factory the daemon used. It only
returns verdicts; every write stays in this process, in journal order (atomicsig.sync.packsync).

If it cannot start or dies, the batch is checked in process (today's path) and one warning is logged;
``ATOMICSIG_SYNC_CHECK_WORKER=0`` disables it.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from atomicsig.format.sigpath import SigPath
from atomicsig.ops.intake import Outcome, check_blob

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger("atomicsig.sync")
#: Set to 0 (or "off"/"no"/"false") to check every batch in the syncing process itself.
ENV = "ATOMICSIG_SYNC_CHECK_WORKER"

_verifier: Any = None


def _init(factory: Callable[[list[bytes]], Any], blobs: list[bytes]) -> None:
    """In the worker: build the verifier once. Closed (its temporary GnuPG home removed) when the worker exits:
    multiprocessing runs its own finalizers there, not ``atexit``."""
    from multiprocessing import util

    global _verifier
    _verifier = factory(blobs)
    close = getattr(_verifier, "close", None)
    if close is not None:
        util.Finalize(None, close, exitpriority=10)


def _check(items: list[tuple[SigPath, bytes]]) -> list[Outcome | None]:
    """In the worker: :func:`check_blob` for each item, in order."""
    return [check_blob(_verifier, p, b) for p, b in items]


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


class CheckWorker:
    """The worker of one ``sync`` process (held by :class:`atomicsig.sync.daemon.SyncDaemon`, shared by its
    followers, rebuilt when the trusted keys are reloaded). :meth:`submit` returns None when it is not usable:
    the caller checks in process."""

    def __init__(self, factory: Callable[[list[bytes]], Any], blobs: Sequence[bytes]) -> None:
        self._factory = factory
        self._blobs = list(blobs)
        #: What the worker's verifier is built from: the daemon keeps this worker while a reload keeps it.
        self.key = (factory, self._blobs)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        #: False once it failed (or cannot work: a factory that cannot be sent to another process).
        self.usable = enabled()
        if self.usable:
            try:
                pickle.dumps(factory)
            except Exception:  # a lambda or a closure (tests' verifiers): in process, silently
                self.usable = False

    def submit(self, items: list[tuple[SigPath, bytes]]) -> Future[list[Outcome | None]] | None:
        with self._lock:
            if not self.usable:
                return None
            try:
                started = self._pool is None
                if self._pool is None:
                    # Imported here, not at module level: multiprocessing costs every ``sync`` start ~40 ms,
                    # and most passes (one new signature) never start a worker.
                    from concurrent.futures import ProcessPoolExecutor
                    from multiprocessing import get_context

                    self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_init,
                                                     initargs=(self._factory, self._blobs))
                fut = self._pool.submit(_check, items)
                if started:  # the process exists once the first job is submitted
                    pids = sorted(getattr(self._pool, "_processes", None) or ())
                    log.info("check worker started", extra={"fields": {"pid": pids[0] if pids else None}})
                return fut
            except Exception as exc:  # could not start (no /dev/shm, process limit) or already broken
                self._failed(exc)
                return None

    def failed(self, exc: BaseException) -> None:
        """The worker died or its result could not come back: check in process from now on, say so once."""
        with self._lock:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.usable:
            log.warning("check worker failed; checking signatures in this process",
                        extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:300]}})
        self.usable = False
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self.usable = False
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
