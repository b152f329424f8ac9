"""Policy reload without a restart (issue 17): on SIGHUP, or when the policy file (or a file beside it) changes.

In a pod the policy YAML is a ConfigMap volume: the kubelet updates it by writing a new timestamped directory and
swapping the ``..data`` symlink, so the file's path never changes but what it resolves to does. The watcher
therefore compares, every ``interval`` seconds, the identity (device, inode, size, mtime_ns, following links) of
the files the policy was compiled from — the YAML and the key files its ``keys:`` name — and reloads when any
differs. Not its whole directory: a policy kept beside a log file (or anything else that changes) was recompiled
at every check, and each reload empties the decision cache (bench/load_webhook.py: a 0.4 s stall every 2 s).

A reload compiles the YAML exactly as at start (the caller's ``load``: ``policy apply``'s files, staged) and
hands the result to :meth:`Reviewer.replace_policies`. A YAML that does not compile, or a policy c/image would
refuse, changes nothing: the previous policy keeps being served, one log line says why, and
``atomicsig_webhook_policy_reload_errors_total`` counts it. Each change is tried once (no retry every interval
and no log flood); the next change or SIGHUP tries again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from atomicsig.errors import AtomicsigError
from atomicsig.webhook.review import NodePolicy, Reviewer
from atomicsig.webhook.server import Metrics

log = logging.getLogger("atomicsig.webhook")

Loader = Callable[[], tuple[NodePolicy, Mapping[str, NodePolicy]]]
_Identity = tuple[int, int, int, int] | None


def _identity(path: str) -> _Identity:
    try:
        st = os.stat(path)  # follows ..data and per-file links: what a read would get
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def fingerprint(files: Sequence[str | Path]) -> tuple[tuple[str, _Identity], ...]:
    """What the watcher compares: each file by identity (None: missing or unreadable)."""
    return tuple((str(f), _identity(str(f))) for f in files)


class PolicyReloader:
    """A daemon thread that reloads the policy when asked (:meth:`request`, from SIGHUP) or when it changed."""

    def __init__(self, reviewer: Reviewer, load: Loader, policy_file: str | Path, *, interval: float,
                 watched: Callable[[], Sequence[str | Path]] | None = None, metrics: Metrics | None = None) -> None:
        """``interval``: seconds between checks of the files; 0 turns watching off (SIGHUP still reloads).
        ``watched``: the files the policy now served was compiled from (default: the policy file alone)."""
        self.reviewer, self.load, self.policy_file = reviewer, load, Path(policy_file)
        self.interval, self.metrics = interval, metrics
        self.watched = watched or (lambda: [self.policy_file])
        self._last = fingerprint(self.watched())
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atomicsig-policy-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def request(self) -> None:
        """Reload now (async-signal-safe enough for a Python signal handler: it only sets an event)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            asked = self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            if self._stopping.is_set():
                return
            now = fingerprint(self.watched())
            if asked or now != self._last:
                self._last = now
                if self.reload("SIGHUP" if asked else "file changed"):
                    self._last = fingerprint(self.watched())  # the new policy may name other key files

    def reload(self, why: str) -> bool:
        """Load and swap in the policy; False (old policy kept, one line logged) when it does not load."""
        try:
            cluster, namespaces = self.load()
            generation = self.reviewer.replace_policies(cluster, namespaces)
        except AtomicsigError as exc:
            if self.metrics is not None:
                self.metrics.policy_reload_errors.inc()
            log.error("policy reload (%s) failed, still serving the previous policy: %s", why, exc.message)
            return False
        except Exception as exc:  # a bug must not kill the watcher: the old policy stays, the line says what
            if self.metrics is not None:
                self.metrics.policy_reload_errors.inc()
            log.error("policy reload (%s) failed, still serving the previous policy: internal error: %s: %s", why,
                      type(exc).__name__, exc)
            return False
        if self.metrics is not None:
            self.metrics.policy_reloads.inc()
            self.metrics.policy_loaded.set_to_current_time()
        log.info("policy reloaded (%s): %s, %d namespace policies, generation %d", why, self.policy_file,
                 len(namespaces), generation)
        return True


__all__ = ["PolicyReloader", "fingerprint"]
