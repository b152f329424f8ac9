"""``atomicsig webhook --processes N``: N pre-forked worker processes on one listening socket (issue 17 #4).

One interpreter serves on one core (the GIL): at ~1 ms of CPU per cached review, 50 reviews in flight wait ~50 ms on
average (Little's law), and p99 lands near the 100 ms goal. N processes use N cores. The parent (this
:class:`Supervisor`) binds the port once (net/httpd.listen_socket: port 0 resolves to one real port, a busy port is
one ListenError before any worker exists), forks the workers, and then only supervises: it starts no thread before
forking (a thread's locks would be copied held into the children), so watchers, the log writer, the TLS reloader
and cheroot's pool all start in the workers, each with its own decision cache.

**Shared socket, not SO_REUSEPORT.** Every worker accepts on the one socket the parent bound (inherited). Measured
with ``python bench/prefork_spread.py`` (2 workers on 2 shared cores, TLS, 50 keep-alive connections opened at
once, ~1 ms of CPU per request; how the 50 connections split between the two workers, load ~2): shared socket, 37
runs: median 24/26, mean 22.5 for the smaller share, 6 runs at 20/30 or worse, the worst 16/34 and 8/42;
SO_REUSEPORT (each worker binds its own socket, the kernel hashes each connection's addresses onto one), 25 runs:
median 23/27, mean 22.7, 2 runs at 20/30 or worse, the worst 18/32. So the average split is the same, and
SO_REUSEPORT spreads **more evenly in the tail**: a hash ignores timing, while on one socket whichever worker's
accept loop wakes first takes the connection, and a worker descheduled during a burst of connects can end up with
few. The shared socket is kept anyway, for what SO_REUSEPORT breaks: any process of the same user may join the
port (a stale webhook left running would silently take a share of the reviews instead of being a busy port at
start), and the connections waiting in a dying worker's own accept queue are reset, while on the shared socket
they wait for another worker. Keep-alive connections stay with the worker that accepted them (the API server
keeps its connections), so the split is set when they open; a restart of the API server re-draws it.

Signals: SIGTERM/SIGINT to the parent stop every worker (SIGTERM, then SIGKILL after ``grace`` seconds) and exit 0;
SIGHUP is forwarded (each worker reloads its policy). A worker that dies is replaced after a backoff; 5 deaths
within 10 s stop everything with exit 3 (a crash loop must not spin). Workers die with the parent: PR_SET_PDEATHSIG
(Linux) sends them SIGTERM when it goes, even by SIGKILL, and a ``getppid()`` check covers the window before the
prctl and kernels without it.

Metrics: prometheus_client's multiprocess mode. It chooses its value class when ``prometheus_client.values`` is
first imported (0.17.0 and the current releases alike), from ``PROMETHEUS_MULTIPROC_DIR``: :func:`metrics_dir`
sets it to a private 0700 directory before the CLI imports anything that imports prometheus_client, and removes
both at exit. Each worker writes its own files there; /metrics, from whichever worker answers, sums them
(webhook/server.Metrics); the parent marks a worker dead when it exits (its live gauge goes, its counts stay).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from atomicsig.errors import AtomicsigError, Undecided

log = logging.getLogger("atomicsig.webhook")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """A private directory for prometheus_client's multiprocess files, named in the environment for as long as the
    block runs (see the module docstring for why it must come before any import of prometheus_client; checked by
    :func:`check_multiprocess_metrics` before forking)."""
    path = tempfile.mkdtemp(prefix="atomicsig-webhook-metrics-")  # mode 0700
    old = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = old
        shutil.rmtree(path, ignore_errors=True)


def check_multiprocess_metrics() -> None:
    """Refuse to fork when prometheus_client was imported before :func:`metrics_dir` (only an in-process caller
    can have done that): every worker would count on its own and /metrics would show one worker's share."""
    from prometheus_client import values

    if values.ValueClass.__name__ == "MutexValue":
        raise AtomicsigError("--processes: prometheus_client was loaded before its multiprocess directory was set; "
                             "per-worker metrics could not be summed")


_sighup_early: list[bool] = []


def _remember_sighup(signum: int, frame: object) -> None:
    _sighup_early.append(True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """A worker stopped before its server runs (a replacement still loading its policy when the supervisor stops):
    unwind, so that what it made on the way — a temporary GnuPG home while it reads the policy's keys — is
    removed by its own ``finally``. SIGTERM's default ended it on the spot and left that home behind (found by
    the worker-replacement test under CI load)."""
    raise SystemExit(128 + signum)


def early_sighup() -> bool:
    """Whether a SIGHUP reached this worker before it installed its own handler (then it must reload: the policy
    it was handed predates the signal)."""
    return bool(_sighup_early)


def die_with_parent(parent: int) -> bool:
    """In a worker just forked: SIGTERM when the parent exits (any way, SIGKILL included). False if it already has
    (it may have died before the prctl, which then never fires): the worker should exit at once."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == parent


def watch_parent(parent: int, stop: Callable[[], None], interval: float = 1.0) -> threading.Thread:
    """The fallback to PR_SET_PDEATHSIG: a daemon thread in the worker calling ``stop`` once the parent is gone
    (the worker is re-parented, ``getppid()`` changes)."""
    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        stop()
    thread = threading.Thread(target=run, name="atomicsig-parent-watch", daemon=True)
    thread.start()
    return thread


def describe_status(status: int) -> str:
    """``exit status 1`` / ``killed by signal 9 (SIGKILL)``, from a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by signal {sig} ({signal.Signals(sig).name})"
        return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class Supervisor:
    """Keep ``processes`` workers running until SIGTERM/SIGINT. ``spawn(first)`` starts one and returns its pid
    (``first``: one of the workers started with the supervisor, not a replacement); it forks, and the child calls
    :meth:`in_child` first and ends with ``os._exit`` (the CLI's: only the CLI ends processes), never returning
    into the caller's stack. ``on_exit(pid)`` runs in the parent for every worker reaped."""

    processes: int
    spawn: Callable[[bool], int]
    on_exit: Callable[[int], None] = lambda pid: None
    grace: float = 10.0
    crash_limit: int = 5
    crash_window: float = 10.0
    backoff_max: float = 5.0
    workers: dict[int, float] = field(default_factory=dict)  # pid -> start time (monotonic)
    deaths: list[float] = field(default_factory=list)
    _old_mask: set[int | signal.Signals] | None = None
    _parent: int = 0

    def start(self) -> None:
        """Block the signals the parent waits for, then start every worker. Refuses if a thread is running: it
        would exist in the parent only, with whatever lock it held copied held into every worker."""
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            raise AtomicsigError(f"cannot fork webhook workers with threads running: {', '.join(others)}")
        self._parent = os.getpid()
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for _ in range(self.processes):
            self._start_one(first=True)

    def in_child(self) -> bool:
        """In a worker just forked: default signal handling back (the worker installs its own), the parent's
        signal mask undone, death with the parent armed. False: the parent is already gone, exit now.

        SIGHUP is not given its default (which ends the process): until the worker's own handler is in place, a
        SIGHUP forwarded to it is only remembered (:func:`early_sighup`). It used to kill a worker still loading,
        which the supervisor then replaced (found by the SIGHUP test under CI load). SIGTERM unwinds the worker
        (:func:`_exit_on_sigterm`) instead of ending it where it stands."""
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        signal.signal(signal.SIGHUP, _remember_sighup)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask or set())
        return die_with_parent(self._parent)

    def _start_one(self, *, first: bool) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.workers[self.spawn(first)] = time.monotonic()

    def wait(self) -> int:
        """Supervise until SIGTERM/SIGINT (0, every worker stopped) or a crash loop (exit 3 as Undecided)."""
        pending: list[float] = []  # replacements due (monotonic times)
        try:
            while True:
                timeout = 1.0 if not pending else max(0.0, min(pending) - time.monotonic())
                got = signal.sigtimedwait(_SIGNALS, timeout)
                if got is not None and got.si_signo in (signal.SIGTERM, signal.SIGINT):
                    return self.stop()
                if got is not None and got.si_signo == signal.SIGHUP:
                    self._signal_all(signal.SIGHUP)
                for pid, status in self._reap():
                    now = time.monotonic()
                    self.deaths = [t for t in self.deaths if now - t < self.crash_window] + [now]
                    if len(self.deaths) >= self.crash_limit:  # the error below is the one line about it
                        self.stop()
                        raise Undecided(f"webhook workers keep dying ({len(self.deaths)} within "
                                        f"{self.crash_window:g} s; the last, pid {pid}: {describe_status(status)})")
                    delay = min(self.backoff_max, 0.1 * 2 ** (len(self.deaths) - 1))
                    log.error("webhook worker %d %s; starting another in %.1f s", pid, describe_status(status),
                              delay)
                    pending.append(now + delay)
                now = time.monotonic()
                for due in [t for t in pending if t <= now]:
                    pending.remove(due)
                    self._start_one(first=False)
        finally:
            if self._old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def stop(self) -> int:
        """SIGTERM every worker, wait ``grace`` seconds, SIGKILL the rest, reap all; 0."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.workers and time.monotonic() < deadline:
            if not self._reap():
                signal.sigtimedwait({signal.SIGCHLD}, 0.05)
        if self.workers:
            self._signal_all(signal.SIGKILL)
            while self.workers:
                pid, _ = os.waitpid(-1, 0)
                if self.workers.pop(pid, None) is not None:
                    self.on_exit(pid)
        return 0

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> list[tuple[int, int]]:
        out = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.workers.pop(pid, None) is not None:
                self.on_exit(pid)
                out.append((pid, status))
        return out


__all__ = ["MULTIPROC_ENV", "Supervisor", "check_multiprocess_metrics", "describe_status", "die_with_parent",
           "early_sighup", "metrics_dir", "watch_parent"]
