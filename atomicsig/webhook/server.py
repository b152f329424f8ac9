"""The webhook over HTTPS: ``POST /validate``, ``POST /mutate`` (digest pinning), ``/healthz``, ``/metrics``.

It runs on the hardened server ``serve`` uses (:mod:`atomicsig.net.httpd`: connection cap with eviction, head
gating, exchange deadline, reserved health thread, body cap), because the API server is one client among whatever
else reaches the Service, and a slow client must not make admission time out cluster-wide. HTTP-level answers:

* a body that is not an AdmissionReview (not JSON, wrong apiVersion/kind, no uid): **400** with a one-line JSON
  error — there is no request uid to answer, so no AdmissionReview can be written; the API server applies the
  configuration's failurePolicy;
* over ``max_body`` (default 3 MiB: etcd's request limit is 1.5 MiB, a review carries object and oldObject):
  **413**; another method: **405**; another path: **404**;
* everything else is an AdmissionReview response (:mod:`atomicsig.format.admission`), also for an object that is
  not what its kind says (denied, ``status.code`` 400, the problem named).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from atomicsig.errors import InputError
from atomicsig.format import admission
from atomicsig.net.httpd import (
    BODY_READ_ERRORS,
    HardenedServer,
    Limits,
    body_over_limit,
    check_tls_files,
    parse_listen,
    use_tls,
)
from atomicsig.webhook.review import Reviewer

log = logging.getLogger("atomicsig.webhook")

#: AdmissionReview bodies: object + oldObject of up to etcd's 1.5 MiB each.
MAX_BODY = 3 * 1024 * 1024

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class Metrics:
    """The webhook's Prometheus metrics, in a registry of their own (docs/webhook.md "Metrics").

    Under ``--processes N`` (``multiprocess_dir``: prometheus_client's multiprocess directory, webhook/prefork.py)
    every worker writes its values to its own files there and ``scraped``, the registry /metrics reports, reads
    all of them, so /metrics is the sum over the workers whichever of them answers."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.scraped = self.registry  # what /metrics reports
        if multiprocess_dir:
            from prometheus_client import multiprocess

            self.scraped = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scraped, path=multiprocess_dir)
        self.reviews = Counter("atomicsig_webhook_reviews", "AdmissionReviews answered, by endpoint and verdict "
                               "(allowed, denied, exempt, skipped, invalid)", ["endpoint", "verdict"],
                               registry=self.registry)
        self.warned = Counter("atomicsig_webhook_warned_reviews", "Allowed reviews that carried warnings (audit "
                              "mode, on-error allow, unknown kinds)", ["endpoint"], registry=self.registry)
        self.images = Counter("atomicsig_webhook_images", "Distinct images checked, by decision and scope mode",
                              ["decision", "mode"], registry=self.registry)
        self.latency = Histogram("atomicsig_webhook_review_seconds", "Time to answer one AdmissionReview",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.http = Counter("atomicsig_webhook_http_requests", "HTTP requests by method and status",
                            ["method", "status"], registry=self.registry)
        self.policy_reloads = Counter("atomicsig_webhook_policy_reloads", "Policy reloads that took effect "
                                      "(SIGHUP or a changed policy file)", registry=self.registry)
        self.policy_reload_errors = Counter("atomicsig_webhook_policy_reload_errors", "Policy reloads refused (the "
                                            "previous policy is still served)", registry=self.registry)
        # Across workers (each loads and reloads on its own): the oldest load any live worker still serves, so
        # an alert on its age or on a reload not taking effect sees the worker that lags; a dead worker's value
        # goes with it. Ignored in a single process.
        self.policy_loaded = Gauge("atomicsig_webhook_policy_last_reload_success_timestamp_seconds", "When the "
                                   "policy now served was loaded (Unix time)", registry=self.registry,
                                   multiprocess_mode="livemin")
        self.policy_loaded.set_to_current_time()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client's ``labels()`` validates the values and
        takes the metric's lock at every call, several times per review on every request thread. Same child
        objects, so /metrics is unchanged."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < 256:  # the method label is the client's: keep the memo bounded
                self._children[key] = found
        return found


class WebhookApp:
    """The WSGI application around a :class:`Reviewer`."""

    def __init__(self, reviewer: Reviewer, *, max_body: int = MAX_BODY, metrics_dir: str | None = None) -> None:
        """``metrics_dir``: prometheus_client's multiprocess directory under ``--processes N`` (:class:`Metrics`)."""
        self.reviewer = reviewer
        self.max_body = max_body
        self.metrics = Metrics(metrics_dir)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "")
        headers = [("Content-Type", "application/json")]
        try:
            status, body, ctype = self._dispatch(environ, method, path)
            headers = [("Content-Type", ctype)]
        except _HTTPError as err:
            status, body = err.status, json.dumps({"error": err.message}).encode() + b"\n"
            if err.close:
                headers.append(("Connection", "close"))
            if status == 405:
                headers.append(("Allow", "POST" if path in ("/validate", "/mutate") else "GET, HEAD"))
        self.metrics.child(self.metrics.http, method, str(status)).inc()
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        return [b"" if method == "HEAD" else body]

    def _dispatch(self, environ: dict[str, Any], method: str, path: str) -> tuple[int, bytes, str]:
        if path in ("/healthz", "/metrics"):
            if method not in ("GET", "HEAD"):
                raise _HTTPError(405, "method not allowed")
            if path == "/healthz":
                return 200, b"ok\n", "text/plain"
            return 200, generate_latest(self.metrics.scraped), CONTENT_TYPE_LATEST
        if path not in ("/validate", "/mutate"):
            raise _HTTPError(404, "not found; the webhook answers POST /validate and POST /mutate")
        if method != "POST":
            raise _HTTPError(405, "method not allowed")
        endpoint = path[1:]
        started = time.monotonic()
        body = self._read_body(environ)
        try:
            request = admission.parse_review(body)
        except InputError as exc:
            self.metrics.child(self.metrics.reviews, endpoint, "invalid").inc()
            raise _HTTPError(400, exc.message) from None
        answer = self.answer(request, mutate=endpoint == "mutate")
        self.metrics.child(self.metrics.latency, endpoint).observe(time.monotonic() - started)
        return 200, json.dumps(answer).encode(), "application/json"

    def answer(self, request: admission.Request, *, mutate: bool) -> dict[str, Any]:
        """The AdmissionReview response document for a parsed request (logged one line per review)."""
        endpoint = "mutate" if mutate else "validate"
        try:
            out = self.reviewer.review(request, mutate=mutate)
        except InputError as exc:  # the object is not what its kind says: deny, naming the problem
            self.metrics.child(self.metrics.reviews, endpoint, "invalid").inc()
            log.info("review %s %s %s/%s: invalid: %s", request.uid, request.kind, request.namespace, request.name,
                     exc.message)
            return admission.response(request.uid, allowed=False, code=400, message=f"atomicsig: {exc.message}",
                                      api_version=request.api_version)
        counts: dict[tuple[str, str], int] = {}
        for r in out.images:
            counts[(r.decision, r.mode)] = counts.get((r.decision, r.mode), 0) + 1
        for (decision, mode), n in counts.items():
            self.metrics.child(self.metrics.images, decision, mode).inc(n)
        self.metrics.child(self.metrics.reviews, endpoint, out.verdict).inc()
        if out.allowed and out.warnings:
            self.metrics.child(self.metrics.warned, endpoint).inc()
        log.info("review %s %s %s/%s: %s%s", request.uid, request.kind, request.namespace, request.name,
                 out.verdict, f": {out.message}" if out.message else "")
        return admission.response(request.uid, allowed=out.allowed, message=out.message, warnings=out.warnings,
                                  patch=out.patch, audit_annotations=out.annotations(),
                                  api_version=request.api_version)

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        length = environ.get("CONTENT_LENGTH") or ""
        limit = self.max_body
        if length:
            if not (length.isascii() and length.isdigit()):
                raise _HTTPError(400, "invalid Content-Length", close=True)
            if len(length) > 18 or int(length) > limit:
                raise _HTTPError(413, f"body larger than {limit} bytes", close=True)
        stream = environ["wsgi.input"]
        try:
            data: bytes = stream.read(int(length)) if length else stream.read(limit + 1)
        except BODY_READ_ERRORS as exc:
            if body_over_limit(exc):
                raise _HTTPError(413, f"body larger than {limit} bytes", close=True) from None
            if isinstance(exc, TimeoutError):
                raise _HTTPError(408, "the request body stopped arriving", close=True) from None
            raise _HTTPError(400, f"malformed or truncated body: {exc}"[:200], close=True) from None
        if len(data) > limit:
            raise _HTTPError(413, f"body larger than {limit} bytes", close=True)
        if length and len(data) != int(length):
            raise _HTTPError(400, "body shorter than Content-Length", close=True)
        return data


def check_tls(tls_cert: str, tls_key: str) -> None:
    """The InputError :func:`make_server` raises for TLS files that do not load, without building a server."""
    try:
        check_tls_files(tls_cert, tls_key)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load TLS certificate {tls_cert} / key {tls_key}: {exc}") from None


def make_server(app: WebhookApp, listen: str, *, tls_cert: str | None, tls_key: str | None,
                limits: Limits | None = None, sock: socket.socket | None = None) -> HardenedServer:
    """The hardened server for ``app`` (not started); TLS from the two files when given (the API server only
    calls HTTPS webhooks; plain HTTP is for tests behind a TLS-terminating proxy). ``sock``: serve on this
    listening socket (a pre-forked worker's, inherited) instead of binding ``listen``."""
    if bool(tls_cert) != bool(tls_key):
        raise InputError("TLS needs both --tls-cert and --tls-key")
    limits = limits or Limits(max_body=app.max_body)
    server = HardenedServer(parse_listen(listen), app, limits, tls=bool(tls_cert), sock=sock)
    if tls_cert and tls_key:
        try:
            use_tls(server, tls_cert, tls_key)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load TLS certificate {tls_cert} / key {tls_key}: {exc}") from None
    return server


__all__ = ["MAX_BODY", "Metrics", "WebhookApp", "check_tls", "make_server"]
