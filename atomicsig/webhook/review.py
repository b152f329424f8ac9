"""One AdmissionReview → one decision, with the evaluation ``audit`` and ``verify`` use (issue 17 #1, #2).

Each image of a pod (containers, init and ephemeral containers; :mod:`atomicsig.format.admission`) is judged by
:class:`atomicsig.ops.evaluate.Evaluator` under the policy of the request's namespace — CRI-O's per-namespace file
when the policy YAML has a ``namespaces:`` block for it, else the cluster policy (docs/policy.md "Namespaces") — so
the webhook, ``audit`` and ``verify`` cannot disagree. The rules, and why:

* **A tag is resolved to a digest at the registry**, the check is made on that digest, and the answer names it
  (warnings, denial message, ``auditAnnotations``); with digest pinning (``/mutate``) the pod is patched to exactly
  that digest, so a node runs what was checked, not what the tag points to at pull time. A tag naming a manifest
  list is checked on *every* instance — the pod may be scheduled on any platform — and pinned to the list digest.
  An image given by digest is checked without asking the registry (as ``verify`` does, :mod:`atomicsig.ops.resolve`).
* **Short names are refused**: ``nginx`` means whatever registries.conf's unqualified-search-registries give on
  each node (c/image tries them in order), so no single scope or digest can be checked for it.
* **Enforce** denies an image that is refused (a failed requirement, an unknown manifest). **Audit** — the whole
  webhook (``audit=True``) or the winning scope (``enforce: false``) — allows and returns a warning saying what
  enforcing would do.
* **Could not decide** (a registry that does not answer, a ``sigstoreSigned`` requirement, the per-review deadline
  passing) takes the configured failure behaviour: ``deny`` (default; the same as ``failurePolicy: Fail``) or
  ``allow`` with a warning. The deadline is shorter than the API server's ``timeoutSeconds``, so a hanging registry
  gets *our* answer, not the API server's failurePolicy.
* Namespaces can be exempted; ``DELETE``/``CONNECT``, subresources other than ``ephemeralcontainers`` and kinds
  without a pod spec are allowed (the latter with a warning: the webhook configuration selected a kind this code
  does not read, which is a configuration mistake to see, not to block a cluster on).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import EXIT_NEGATIVE, AtomicsigError, InputError, NotFound
from atomicsig.format import admission, reference
from atomicsig.net import fetch
from atomicsig.ops.evaluate import Evaluation, Evaluator
from atomicsig.ops.resolve import Resolver
from atomicsig.ops.verify import ACCEPTED, ERROR, REJECTED
from atomicsig.store.select import AutoStore

__all__ = ["ImageResult", "NodePolicy", "Outcome", "Reviewer", "WebhookSettings"]


@dataclass(frozen=True)
class NodePolicy:
    """One policy a node would enforce: policy.json's document, the registries.d it reads, where keyPaths resolve
    (a staged root first), and the audit-mode scopes (``policy apply``'s sidecar). Built by the caller from the
    policy YAML (``atomicsig webhook -f``: cli/webhook.py stages it exactly as ``audit -f`` does)."""

    policy: dict[str, Any]
    registries_dir: Path
    roots: tuple[Path, ...]
    audit_scopes: Mapping[str, list[Any]] = field(default_factory=dict)
    source: str = "policy.json"
    #: Unique per object, never reused (``id()`` is, once a replaced policy is freed): what the decision cache
    #: and the per-thread evaluators are keyed by, so nothing decided under a replaced policy is served again.
    serial: int = field(default_factory=itertools.count(1).__next__, compare=False)


@dataclass(frozen=True)
class WebhookSettings:
    """What the operator chooses (docs/webhook.md)."""

    audit: bool = False  # allow everything, warn about what enforce would deny
    on_error: str = "deny"  # "deny" | "allow": an image that could not be checked (or the deadline passed)
    deadline: float = 8.0  # seconds per review; keep below the configuration's timeoutSeconds (default 10)
    exempt_namespaces: frozenset[str] = frozenset()
    pin_digests: bool = False  # /mutate answers with a JSONPatch to the checked digests
    workers: int = 16  # image checks in flight, all reviews together
    #: Seconds a decided (accepted or refused) answer for an image given *by digest* is reused. 0: never.
    cache_ttl: float = 10.0
    tls_verify: bool = True
    cert_dir: str | None = None
    authfile: str | None = None


@dataclass
class ImageResult:
    """The decision for one distinct image string of a review."""

    image: str
    decision: str = ERROR  # accepted | rejected | error
    reason: str = ""
    scope: str = ""
    mode: str = "enforce"
    digest: str = ""  # what the pod would be pinned to: the tag's digest (a list's own digest), or the one given
    checked: tuple[str, ...] = ()  # the manifest digests evaluated (the instances of a list)
    pinnable: bool = False  # given by tag and resolved: a patch can pin it
    not_pinned: str = ""  # accepted by tag, but the node's policy would refuse name@digest: why (never pinned)

    def describe(self) -> str:
        at = f" ({self.digest})" if self.digest else ""
        scope = f" under scope {self.scope}" if self.scope else ""
        return f"image {self.image}{at}{scope}: {self.reason}"


@dataclass
class Outcome:
    """The answer to one review, before it is written as an AdmissionReview response."""

    allowed: bool
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    patch: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageResult] = field(default_factory=list)
    verdict: str = "allowed"  # allowed | denied | exempt | skipped (the metrics label)

    def annotations(self) -> dict[str, str]:
        """``auditAnnotations``: which digest was checked for each image (the API server's audit log keeps it)."""
        checked = {r.image: list(r.checked) for r in self.images if r.checked}
        text = json.dumps(checked, sort_keys=True)
        while len(text) > 4000 and checked:  # stay valid JSON: drop whole entries, never cut the text
            checked.pop(sorted(checked)[-1])
            text = json.dumps(checked, sort_keys=True)
        return {"checked-digests": text} if checked else {}


class _DaemonPool:
    """Fixed daemon worker threads running submitted calls, each answered in a :class:`concurrent.futures.Future`.

    Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so one check stuck on a registry that
    never answers (until the registry client's own timeouts, 30 s per attempt) kept a stopped webhook alive past
    the pod's termination grace period. A review never waits past its deadline anyway; at exit nothing waits."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[tuple[cf.Future[Any], Any, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"atomicsig-review-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Any, *args: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        self._queue.put((fut, fn, args))
        return fut

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():  # cancelled while queued (its review's deadline passed)
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the review, which answers "internal error"
                fut.set_exception(exc)


class Reviewer:
    """Decides reviews; thread-safe. Image checks run on a bounded pool shared by all reviews, each thread with its
    own :class:`Evaluator` per policy (an Evaluator caches verifiers and is not shared between threads)."""

    def __init__(self, cluster: NodePolicy, namespaces: Mapping[str, NodePolicy] | None = None,
                 settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings()
        if self.settings.on_error not in ("deny", "allow"):
            raise InputError(f"on-error must be deny or allow, not {self.settings.on_error!r}")
        namespaces = dict(namespaces or {})
        self._check_policies(cluster, namespaces)  # a broken policy is refused at start (PolicyError, exit 2)
        self.cluster, self.namespaces = cluster, namespaces
        self.generation = 0  # policies replaced so far (replace_policies)
        self.resolver = Resolver(tls_verify=self.settings.tls_verify, cert_dir=self.settings.cert_dir,
                                 authfile=self.settings.authfile, all_instances=True)
        self._local = threading.local()
        self._evaluators: list[Evaluator] = []
        self._lock = threading.Lock()
        self._pool = _DaemonPool(self.settings.workers)
        self._cache: dict[tuple[int, str], tuple[float, ImageResult]] = {}  # (NodePolicy.serial, image)
        self._inflight: dict[tuple[int, str], cf.Future[ImageResult]] = {}  # _submit: checks being run
        self.cache_hits = 0

    def close(self) -> None:
        self._pool.shutdown()
        with self._lock:
            for ev in self._evaluators:
                ev.close()
            self._evaluators.clear()

    @staticmethod
    def _check_policies(cluster: NodePolicy, namespaces: Mapping[str, NodePolicy]) -> None:
        for p in [cluster, *namespaces.values()]:
            Evaluator(p.policy, AutoStore(registries_dir=p.registries_dir), roots=p.roots,
                      policy_source=p.source).close()

    def replace_policies(self, cluster: NodePolicy, namespaces: Mapping[str, NodePolicy] | None = None) -> int:
        """Serve new policies from the next review on (a policy reload: SIGHUP or the watched file changed).

        Checked first as at start: a policy c/image would refuse raises :class:`PolicyError` and the old policies
        stay in force. Reviews already running finish under the policy they started with (they hold it); the
        decision cache is emptied, and its keys carry the policy's :attr:`NodePolicy.serial`, so a check that
        started before the swap and ends after it can never answer a review under the new policy. Returns the new
        :attr:`generation`."""
        namespaces = dict(namespaces or {})
        self._check_policies(cluster, namespaces)
        with self._lock:
            self.cluster, self.namespaces = cluster, namespaces  # one policy_for() sees both or neither: GIL
            self.generation += 1
            self._cache.clear()
            return self.generation

    def policy_for(self, namespace: str) -> NodePolicy:
        """CRI-O's choice for a pod in ``namespace``: its namespace policy if the YAML has one, else the cluster's."""
        with self._lock:
            return self.namespaces.get(namespace, self.cluster)

    def _current_serials(self) -> set[int]:
        with self._lock:
            return {p.serial for p in [self.cluster, *self.namespaces.values()]}

    def _evaluator(self, policy: NodePolicy) -> Evaluator:
        cache: dict[int, Evaluator] = self._local.__dict__.setdefault("evaluators", {})
        ev = cache.get(policy.serial)
        if ev is None:
            live = self._current_serials() | {policy.serial}
            for serial in [k for k in cache if k not in live]:  # replaced policies: only this thread used them
                old = cache.pop(serial)
                old.close()
                with self._lock:
                    if old in self._evaluators:  # close() may have run meanwhile
                        self._evaluators.remove(old)
            s = self.settings
            store = AutoStore(registries_dir=policy.registries_dir, tls_verify=s.tls_verify, cert_dir=s.cert_dir,
                              authfile=s.authfile)
            ev = Evaluator(policy.policy, store, roots=policy.roots, policy_source=policy.source,
                           audit_scopes=policy.audit_scopes)
            cache[policy.serial] = ev
            with self._lock:
                self._evaluators.append(ev)
        return ev

    # ---- one image --------------------------------------------------------------------------------------------

    def check_image(self, image: str, policy: NodePolicy) -> ImageResult:
        """The decision for one image string under ``policy`` (never raises for a bad image: it is an answer)."""
        res = ImageResult(image)
        if not image:
            res.decision, res.reason = REJECTED, "the container has no image"
            return res
        try:
            ref = reference.parse(image)
        except AtomicsigError as exc:
            res.decision, res.reason = REJECTED, exc.message
            return res
        if reference.implicit_docker_hub_warning(image) is not None:
            res.decision = REJECTED
            res.reason = ("short name: it names no registry host, and containers/image would pick one from "
                          "registries.conf's unqualified-search-registries on each node, so no single image can be "
                          f"checked; write the host (did you mean {ref.with_tag_default()!s}?)")
            return res
        evaluator = self._evaluator(policy)
        res.scope, reqs = evaluator.scope_for(ref)
        if evaluator.audited(res.scope, reqs) is not None:
            res.mode = "audit"
        else:
            rejecting = [i for i, r in enumerate(reqs) if isinstance(r, dict) and r.get("type") == "reject"]
            if rejecting:  # refused whatever its digest (evaluate_reference agrees): no need to ask the registry
                res.decision, res.reason = REJECTED, f"reject[{rejecting[0]}]: the scope rejects every image"
                return res
        try:
            targets = self.resolver.resolve(image) if not ref.digest else []
        except AtomicsigError as exc:
            negative = isinstance(exc, NotFound) or exc.exit_code == EXIT_NEGATIVE
            res.decision, res.reason = (REJECTED if negative else ERROR), exc.message
            return res
        if ref.digest:
            # As verify does for a digest: that digest, under the identity a signature claims (resolve.Target).
            res.digest, evaluated = ref.digest, [(reference.parse(ref.identity()), ref.digest)]
        else:
            res.digest, res.pinnable = targets[0].digest, True
            instances = targets[1:] or targets[:1]
            evaluated = [(reference.parse(t.identity), t.digest) for t in instances]
        evs: list[Evaluation] = []
        for r, d in evaluated:
            try:
                evs.append(evaluator.evaluate(r, d))
            except AtomicsigError as exc:
                evs.append(Evaluation(str(r), d, res.scope, decision=ERROR, reason=exc.message))
        res.checked = tuple(e.digest for e in evs)
        notes = [(f"{e.digest[:19]}…: " if len(evs) > 1 else "") + e.reason for e in evs if e.decision != ACCEPTED]
        res.decision = REJECTED if any(e.decision == REJECTED for e in evs) else \
            ERROR if any(e.decision == ERROR for e in evs) else ACCEPTED
        res.reason = "; ".join(notes) if notes else "every requirement passed"
        if evs:
            res.scope, res.mode = evs[0].scope, evs[0].mode
        if res.pinnable and res.decision == ACCEPTED and self.settings.pin_digests:
            self._check_pin(res, ref, evaluator, [d for _, d in evaluated])
        return res

    def _check_pin(self, res: ImageResult, ref: reference.Reference, evaluator: Evaluator,
                   digests: list[str]) -> None:
        """Would the node accept the pinned reference ``name@digest`` as it accepts ``name:tag``? Judged by the
        same evaluation, under the name the node would then pull.

        Not always: under ``signedIdentity: matchExact`` the signature's claimed ``name:tag`` must equal the
        pulled reference, and ``name@digest`` never does (SPEC §2.4); a pin would turn an admitted pod into an
        ImagePullBackOff. ``name:tag@digest`` does not help: c/image's docker transport refuses a reference with
        both a tag and a digest, and matchExact would compare the whole string anyway. So such an image is left
        as the user wrote it (allowed, as decided) and :meth:`_decide` warns why it was not pinned. The digest
        scope (``name@digest``) can also differ from the tag's in policy.json; this catches that as well."""
        pinned = reference.parse(f"{ref.name}@{res.digest}")
        for d in digests:
            try:
                ev = evaluator.evaluate(pinned, d)
            except AtomicsigError as exc:
                res.pinnable, res.not_pinned = False, f"could not check it by digest: {exc.message}"
                return
            if ev.decision != ACCEPTED:
                res.pinnable = False
                res.not_pinned = f"the node's policy would refuse it by digest ({res.digest[:19]}…): {ev.reason}"
                return

    def _scope_of(self, image: str, policy: NodePolicy) -> tuple[str, str]:
        """(winning scope, "audit"|"enforce") for an image whose check did not finish; no I/O."""
        try:
            ref = reference.parse(image)
        except AtomicsigError:
            return "", "enforce"
        evaluator = self._evaluator(policy)
        scope, reqs = evaluator.scope_for(ref)
        return scope, "audit" if evaluator.audited(scope, reqs) is not None else "enforce"

    # ---- the decision cache -----------------------------------------------------------------------------------

    #: Entries kept at most; when full, expired ones are dropped, then everything (a burst of new digests).
    CACHE_MAX = 10_000
    #: Refresh-ahead: a hit on an entry in the last fifth of its ``cache_ttl`` starts one check in the background
    #: (single flight) and is answered from the entry, which is still within its bound. Under steady load an
    #: entry is replaced before it expires, so no review waits for a re-check: before this, every ``cache_ttl``
    #: all reviews in flight waited for the one shared check, under the same 50-review contention (the p99+
    #: tail of bench/load_webhook.py). The bound is unchanged: no answer older than ``cache_ttl`` is served
    #: (an entry that expires before its refresh lands is a miss, as before).
    REFRESH_AHEAD = 0.2

    def _cached(self, policy: NodePolicy, image: str) -> ImageResult | None:
        """A decided answer for an image pinned by digest, at most ``cache_ttl`` seconds old.

        Only digests: what a tag names can change at any time, a digest's answer changes only when its signatures,
        the keys or the policy do. The keys and the policy come from the policy YAML, and a reload
        (:meth:`replace_policies`) empties the cache at once; so ``cache_ttl`` bounds only what changes *outside*
        the YAML: a signature added to or removed from the store (``prune`` after a key is retired stops admitting
        that digest up to ``cache_ttl`` later; a new signature admits it up to ``cache_ttl`` later) and the passing
        of a key's or signature's expiry time. ``error`` answers are never kept: the next review asks again. This is
        what lets 50 concurrent reviews of pinned 10-container pods answer within the webhook's latency budget on 2
        cores (bench/load_webhook.py)."""
        if self.settings.cache_ttl <= 0:
            return None
        key = (policy.serial, image)
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None or entry[0] < now:
                return None
            self.cache_hits += 1
            refresh = entry[0] - now < self.settings.cache_ttl * self.REFRESH_AHEAD and key not in self._inflight
        if refresh:
            self._submit(image, policy, now + self.settings.deadline)  # in the background: nobody waits for it
        return entry[1]

    def _submit(self, image: str, policy: NodePolicy, until: float) -> tuple[cf.Future[ImageResult], bool]:
        """The check of ``image`` on the pool: (future, shared). With the cache on, concurrent reviews missing the
        same digest share one check (single flight) instead of each running its own. Without this, every entry
        expiring under load was re-checked by every review in flight at that moment — 50 reviews x 10 images at
        once, a latency spike every ``cache_ttl`` (bench/load_webhook.py's p96+ tail: 0.2-0.9 s). Only what the
        cache could have answered anyway is shared (``cache_ttl`` > 0, by digest); the shared check is younger
        than the review's own would have been by at most its run time."""
        if self.settings.cache_ttl <= 0 or "@" not in image:
            return self._pool.submit(self._check_and_remember, image, policy, until), False
        key = (policy.serial, image)
        with self._lock:
            fut = self._inflight.get(key)
            if fut is not None:
                return fut, True
            fut = self._pool.submit(self._check_and_remember, image, policy, until)
            self._inflight[key] = fut

        def forget(done: cf.Future[ImageResult]) -> None:
            with self._lock:
                if self._inflight.get(key) is done:
                    del self._inflight[key]
        fut.add_done_callback(forget)
        return fut, True

    def _check_and_remember(self, image: str, policy: NodePolicy, until: float) -> ImageResult:
        """:meth:`check_image` bounded by the review's deadline (``until``, monotonic): every registry and
        lookaside request it makes ends by then (:func:`atomicsig.net.fetch.deadline`), so a hanging registry
        holds a worker no longer than the review that asked, not for the registry client's 30 s x 4 attempts
        after the review was already answered; the pool's workers stay free for the next reviews."""
        with fetch.deadline(until):
            res = self.check_image(image, policy)
        if self.settings.cache_ttl > 0 and "@" in image and not res.pinnable and res.decision != ERROR:
            now = time.monotonic()
            with self._lock:
                if policy is not self.cluster and all(policy is not p for p in self.namespaces.values()):
                    return res  # replaced while this check ran: its answer is for a policy no longer served
                if len(self._cache) >= self.CACHE_MAX:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] >= now}
                    if len(self._cache) >= self.CACHE_MAX:
                        self._cache.clear()
                self._cache[(policy.serial, image)] = (now + self.settings.cache_ttl, res)
        return res

    # ---- one review -------------------------------------------------------------------------------------------

    def review(self, request: admission.Request, *, mutate: bool = False) -> Outcome:
        """The outcome for one request; raises :class:`InputError` only for an object that is not what its kind
        says (the caller answers that review with a denial naming the problem)."""
        started = time.monotonic()
        s = self.settings
        if request.operation not in ("CREATE", "UPDATE"):
            return Outcome(True, verdict="skipped")
        if request.sub_resource and request.sub_resource != "ephemeralcontainers":
            return Outcome(True, verdict="skipped")
        if request.namespace and request.namespace in s.exempt_namespaces:
            return Outcome(True, verdict="exempt")
        if not request.handled:
            return Outcome(True, verdict="skipped", warnings=[
                f"atomicsig: {request.kind_label} is not a kind the signature webhook reads (it checks v1 Pods, "
                "Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs, CronJobs): "
                "its images were not checked"])
        containers = admission.container_images(request)
        policy = self.policy_for(request.namespace)
        distinct = list(dict.fromkeys(c.image for c in containers))
        results: dict[str, ImageResult] = {}
        for img in distinct:
            hit = self._cached(policy, img)
            if hit is not None:
                results[img] = hit
        futures: dict[str, cf.Future[ImageResult]] = {}
        shared: set[str] = set()
        for img in distinct:
            if img not in results:
                futures[img], is_shared = self._submit(img, policy, started + s.deadline)
                if is_shared:
                    shared.add(img)
        remaining = max(0.0, s.deadline - (time.monotonic() - started))
        if futures:
            cf.wait(list(futures.values()), timeout=remaining)
        for img, fut in futures.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                results[img] = fut.result()
            else:
                if img not in shared:  # other reviews may be waiting for a shared check
                    fut.cancel()  # not started: never runs; running: finishes on its own (registry timeouts)
                exc = fut.exception() if fut.done() and not fut.cancelled() else None
                res = ImageResult(img, ERROR, f"internal error: {exc}" if exc else
                                  f"not decided within the {s.deadline:g} s review deadline (registry or signature "
                                  "store slow or unreachable)")
                res.scope, res.mode = self._scope_of(img, policy)  # an audit-mode scope warns, never denies
                results[img] = res
        return self._decide(request, containers, results, mutate=mutate)

    def _decide(self, request: admission.Request, containers: list[admission.ContainerImage],
                results: dict[str, ImageResult], *, mutate: bool) -> Outcome:
        s = self.settings
        denials: list[str] = []
        warnings: list[str] = []
        for r in results.values():
            if r.decision == ACCEPTED:
                if r.not_pinned and mutate:
                    warnings.append(f"atomicsig: image {r.image} not pinned: {r.not_pinned}")  # why first
                if (r.pinnable or r.not_pinned) and not mutate:
                    warnings.append(f"atomicsig: image {r.image} was checked at {r.digest}; the tag may move "
                                    "before the node pulls it (pin the digest)")
                continue
            text = r.describe()
            if r.decision == ERROR:
                if s.audit or r.mode == "audit" or s.on_error == "allow":  # why first: long warnings may be cut
                    why = "audit mode" if s.audit else "scope has enforce: false" if r.mode == "audit" else \
                        "on-error: allow"
                    warnings.append(f"atomicsig ({why}): allowed, could not check {text}")
                else:
                    denials.append(f"could not check {text}")
            elif s.audit or r.mode == "audit":
                why = "audit mode" if s.audit else "scope has enforce: false"
                warnings.append(f"atomicsig ({why}): would deny {text}")
            else:
                denials.append(f"denied {text}")
        images = list(results.values())
        if denials:
            msg = f"atomicsig: {request.kind} {request.namespace + '/' if request.namespace else ''}" \
                  f"{request.name or '(generated name)'}: " + "; ".join(denials)
            return Outcome(False, message=msg[:4000], warnings=warnings, images=images, verdict="denied")
        patch = []
        if mutate and s.pin_digests:
            for c in containers:
                r = results[c.image]
                if r.pinnable and r.digest:
                    # name@digest, no tag: c/image refuses a docker reference with both (docker transport).
                    name = reference.parse(c.image).name
                    patch.append({"op": "replace", "path": c.pointer, "value": f"{name}@{r.digest}"})
        return Outcome(True, warnings=warnings, patch=patch, images=images, verdict="allowed")
