"""``atomicsig webhook`` (issue 17): Kubernetes AdmissionReview in, a decision out, with the evaluation ``audit`` uses.

Every review is a real AdmissionReview document: the objects are built with the official ``kubernetes`` client
models (V1Pod, V1Deployment, V1CronJob, …) and serialized by ``ApiClient().sanitize_for_serialization``, and the
envelope is :func:`review`, one builder following k8s.io/api admission/v1/types.go field by field. The slow tier
runs the real CLI over real TLS on 127.0.0.1, against a real docker-registry (tags resolved there) and real gpg
signatures in a real lookaside directory, and compares each answer with ``audit -f`` on the same YAML.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client as k8s

from atomicsig.errors import InputError
from atomicsig.format import admission
from tests.infra import GpgHome, Registry, free_port, push_image, wait_http
from tests.tokenserver import self_signed

_API = k8s.ApiClient()

#: (group, version, kind, resource) of each kind the webhook reads, as the API server fills request.kind/resource.
GVR = {"Pod": ("", "v1", "pods"), "Deployment": ("apps", "v1", "deployments"),
       "StatefulSet": ("apps", "v1", "statefulsets"), "DaemonSet": ("apps", "v1", "daemonsets"),
       "ReplicaSet": ("apps", "v1", "replicasets"), "Job": ("batch", "v1", "jobs"),
       "CronJob": ("batch", "v1", "cronjobs"), "ConfigMap": ("", "v1", "configmaps")}


def review(obj: Any, *, namespace: str = "default", operation: str = "CREATE", old: Any = None,
           dry_run: bool = False, sub_resource: str = "", uid: str | None = None) -> dict[str, Any]:
    """An ``AdmissionReview`` request as the API server sends it (admission/v1/types.go ``AdmissionRequest``:
    uid, kind, resource, subResource, requestKind, requestResource, name, namespace, operation, userInfo, object,
    oldObject, dryRun, options) for a kubernetes client model object."""
    body = _API.sanitize_for_serialization(obj)
    kind = body["kind"]
    group, version, resource = GVR[kind]
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": resource}
    opts = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}.get(operation)
    req: dict[str, Any] = {
        "uid": uid or str(uuid.uuid4()), "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": body.get("metadata", {}).get("name", ""), "namespace": namespace, "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": None if operation == "DELETE" else body,
        "oldObject": _API.sanitize_for_serialization(old) if old is not None else None,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": opts} if opts else None}
    if sub_resource:
        req["subResource"] = req["requestSubResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def containers(*images: str, prefix: str = "c") -> list[k8s.V1Container]:
    return [k8s.V1Container(name=f"{prefix}{i}", image=img) for i, img in enumerate(images)]


def pod(*images: str, init: tuple[str, ...] = (), ephemeral: tuple[str, ...] = (), name: str = "p") -> k8s.V1Pod:
    eph = [k8s.V1EphemeralContainer(name=f"e{i}", image=img) for i, img in enumerate(ephemeral)] or None
    return k8s.V1Pod(api_version="v1", kind="Pod", metadata=k8s.V1ObjectMeta(name=name),
                     spec=k8s.V1PodSpec(containers=containers(*images), init_containers=containers(
                         *init, prefix="i") or None, ephemeral_containers=eph))


def template(*images: str, init: tuple[str, ...] = ()) -> k8s.V1PodTemplateSpec:
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels={"app": "x"}),
                                 spec=k8s.V1PodSpec(containers=containers(*images),
                                                    init_containers=containers(*init, prefix="i") or None))


def workload(kind: str, *images: str, init: tuple[str, ...] = ()) -> Any:
    """A Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob whose pod template runs ``images``."""
    meta = k8s.V1ObjectMeta(name=kind.lower())
    sel = k8s.V1LabelSelector(match_labels={"app": "x"})
    tpl = template(*images, init=init)
    if kind == "Deployment":
        return k8s.V1Deployment(api_version="apps/v1", kind=kind, metadata=meta,
                                spec=k8s.V1DeploymentSpec(selector=sel, template=tpl))
    if kind == "StatefulSet":
        return k8s.V1StatefulSet(api_version="apps/v1", kind=kind, metadata=meta,
                                 spec=k8s.V1StatefulSetSpec(selector=sel, template=tpl, service_name="x"))
    if kind == "DaemonSet":
        return k8s.V1DaemonSet(api_version="apps/v1", kind=kind, metadata=meta,
                               spec=k8s.V1DaemonSetSpec(selector=sel, template=tpl))
    if kind == "ReplicaSet":
        return k8s.V1ReplicaSet(api_version="apps/v1", kind=kind, metadata=meta,
                                spec=k8s.V1ReplicaSetSpec(selector=sel, template=tpl))
    if kind == "Job":
        return k8s.V1Job(api_version="batch/v1", kind=kind, metadata=meta, spec=k8s.V1JobSpec(template=tpl))
    assert kind == "CronJob"
    return k8s.V1CronJob(api_version="batch/v1", kind=kind, metadata=meta, spec=k8s.V1CronJobSpec(
        schedule="*/5 * * * *", job_template=k8s.V1JobTemplateSpec(spec=k8s.V1JobSpec(template=tpl))))


# ---- the admission/v1 model (fast) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,base", [("Deployment", "/spec/template/spec"), ("StatefulSet", "/spec/template/spec"),
                                       ("DaemonSet", "/spec/template/spec"), ("ReplicaSet", "/spec/template/spec"),
                                       ("Job", "/spec/template/spec"),
                                       ("CronJob", "/spec/jobTemplate/spec/template/spec")])
def test_every_workload_kind_yields_its_template_images(kind: str, base: str) -> None:
    req = admission.parse_review(json.dumps(review(workload(kind, "r.io/a:1", "r.io/b:2", init=("r.io/i:3",))))
                                 .encode())
    assert req.handled and req.namespace == "default" and req.operation == "CREATE"
    got = [(c.image, c.pointer) for c in admission.container_images(req)]
    assert got == [("r.io/a:1", f"{base}/containers/0/image"), ("r.io/b:2", f"{base}/containers/1/image"),
                   ("r.io/i:3", f"{base}/initContainers/0/image")]


def test_pod_lists_containers_init_and_ephemeral() -> None:
    req = admission.parse_review(json.dumps(review(pod("r.io/a:1", init=("r.io/i:1",), ephemeral=("r.io/e:1",))))
                                 .encode())
    assert [c.pointer for c in admission.container_images(req)] == [
        "/spec/containers/0/image", "/spec/initContainers/0/image", "/spec/ephemeralContainers/0/image"]


@pytest.mark.parametrize("body,needle", [
    (b"not json", "not JSON"), (b"[1]", "not a JSON object"), (b"[" * 100000, "not JSON"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}).encode(),
     "admissionReviewVersions"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request is missing"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "", "kind": {}, "operation": "CREATE"}}).encode(), "uid is empty"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": 5}}).encode(), "wrong type")])
def test_malformed_reviews_are_one_line_input_errors(body: bytes, needle: str) -> None:
    with pytest.raises(InputError) as err:
        admission.parse_review(body)
    assert needle in err.value.message and "\n" not in err.value.message


def test_response_envelope_follows_types_go() -> None:
    doc = admission.response("u-1", allowed=True, warnings=["w" * 300] * 60,
                             patch=[{"op": "replace", "path": "/spec/containers/0/image", "value": "r.io/a@sha256:x"}])
    resp = doc["response"]
    assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview"
    assert resp["uid"] == "u-1" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(resp["patch"]))[0]["op"] == "replace"
    assert len(resp["warnings"]) == admission.MAX_WARNINGS and all(len(w) <= 256 for w in resp["warnings"])
    denied = admission.response("u-2", allowed=False, message="no")["response"]
    assert denied["status"] == {"code": 403, "reason": "Forbidden", "message": "no", "status": "Failure"}
    assert "patch" not in denied and "warnings" not in denied


# ---- the real thing (slow) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(registry: Registry, signer: GpgHome, signer_pub: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Images in a real registry, some signed into a lookaside directory, the policy YAML over them, a port that
    accepts connections and never answers (a hanging registry), and TLS files."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    work = tmp_path_factory.mktemp("webhook")
    store = work / "sigstore"
    host = registry.host
    names = ["app/signed:1", "app/unsigned:1", "soft/unsigned:1", "team/signed:1", "app/other:1"]
    digests = {n: push_image(host, n, "webhook-" + n.replace("/", "-").replace(":", "-"), work) for n in names}
    old = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(signer.path)
    try:
        for n in ("app/signed:1", "team/signed:1", "app/other:1"):
            assert run_main(group, ["sign", "--key", signer.fingerprint, "--sigstore", str(store),
                                    "--tls-verify=false", f"{host}/{n}"]) == 0
    finally:
        if old is None:
            os.environ.pop("GNUPGHOME", None)
        else:
            os.environ["GNUPGHOME"] = old
    (work / "trusted.gpg").write_bytes(signer_pub.read_bytes())
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # connections complete in the backlog, nothing is ever read or answered
    hang_host = f"127.0.0.1:{hang.getsockname()[1]}"
    signed = {"signed-by": "trusted", "lookaside": f"file://{store}"}
    policy = work / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "default": "reject", "keys": {"trusted": {"file": "trusted.gpg"}},
        "scopes": {f"{host}/app": signed, f"{host}/soft": {**signed, "enforce": False}, hang_host: signed,
                   f"{hang_host}/soft": {**signed, "enforce": False}},
        "namespaces": {"team-a": {"scopes": {f"{host}/team": signed}}}}))
    cert, key, _ = self_signed(work / "tls")
    yield {"host": host, "digests": digests, "policy": policy, "work": work, "cert": cert, "key": key,
           "hang": hang_host}
    hang.close()


@contextlib.contextmanager
def webhook(world: dict[str, Any], *extra: str, cert: Path | None = None, key: Path | None = None,
            policy: Path | None = None) -> Iterator[str]:
    """The real CLI (``python -m atomicsig webhook``) over TLS on a free 127.0.0.1 port; yields its base URL.
    ``policy=None`` with a ``--config`` in ``extra``: no ``-f``, the file names it."""
    port = free_port()
    policy_args = [] if policy is None and "--config" in extra else ["-f", str(policy or world["policy"])]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log_path = Path(world["work"]) / f"webhook-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child (a pipe nobody reads would fill and stall it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomicsig", "webhook", *policy_args, "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(cert or world["cert"]), "--tls-key", str(key or world["key"]), "--tls-verify=false",
         *extra], stdout=log, stderr=log, env=env, cwd=world["work"])
    log.close()
    base = f"https://127.0.0.1:{port}"
    _CA[base] = str(cert or world["cert"])
    _PROCS[base] = proc
    try:
        try:
            wait_http(base + "/healthz", timeout=30, cafile=_CA[base])
        except Exception:
            proc.kill()
            proc.wait()
            raise AssertionError(log_path.read_text()) from None
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The certificate each webhook() serves, by base URL: every request verifies it, as the API server verifies the
#: webhook against the configuration's caBundle (no unverified HTTPS in these tests).
_CA: dict[str, str] = {}
_PROCS: dict[str, subprocess.Popen[bytes]] = {}


def post(base: str, doc: Any, path: str = "/validate", *, cert: Path | None = None) -> requests.Response:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return requests.post(base + path, data=data, headers={"Content-Type": "application/json"},
                         verify=str(cert) if cert is not None else _CA[base], timeout=60)


def get(base: str, path: str) -> requests.Response:
    return requests.get(base + path, verify=_CA[base], timeout=10)


def answer(base: str, doc: dict[str, Any], path: str = "/validate") -> dict[str, Any]:
    r = post(base, doc, path)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["apiVersion"] == "admission.k8s.io/v1" and got["kind"] == "AdmissionReview"
    assert got["response"]["uid"] == doc["request"]["uid"]  # copied from the request (types.go)
    return got["response"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hook(world: dict[str, Any]) -> Iterator[str]:
    with webhook(world, "--pin-digests", "--exempt-namespace", "kube-system", "--deadline", "3") as base:
        yield base


pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_enforce_allows_signed_denies_unsigned_and_agrees_with_audit(cli, world: dict[str, Any],  # type: ignore[no-untyped-def]
                                                                      hook: str) -> None:
    host, dg = world["host"], world["digests"]
    signed, unsigned = f"{host}/app/signed:1", f"{host}/app/unsigned:1"
    ok = answer(hook, review(pod(signed)))
    assert ok["allowed"] is True
    assert json.loads(ok["auditAnnotations"]["checked-digests"]) == {signed: [dg["app/signed:1"]]}
    assert any(dg["app/signed:1"] in w and "tag may move" in w for w in ok["warnings"])
    bad = answer(hook, review(workload("Deployment", signed, init=(unsigned,))))
    assert bad["allowed"] is False and bad["status"]["code"] == 403 and bad["status"]["reason"] == "Forbidden"
    msg = bad["status"]["message"]
    assert unsigned in msg and dg["app/unsigned:1"] in msg and f"{host}/app" in msg and "no signature" in msg, msg
    assert signed + " " not in msg  # only the refused image is named
    by_digest = f"{host}/app/signed@{dg['app/signed:1']}"
    assert answer(hook, review(pod(by_digest)))["allowed"] is True
    # The same images, the same YAML, through `audit -f`: the same decisions (one evaluation for both).
    (world["work"] / "empty-root").mkdir(exist_ok=True)
    code, out, err = cli("audit", "--tls-verify=false", "--json", "-f", str(world["policy"]), "--root",
                         str(world["work"] / "empty-root"), signed, unsigned, by_digest)
    assert code == 1, err
    decided = {i["reference"]: i["decision"] for i in json.loads(out)["images"]}
    assert decided[signed] == "accepted" and decided[unsigned] == "rejected"
    assert decided[f"{host}/app/signed:1"] == "accepted"  # by digest: audit names the identity it checked


@pytestmark_slow
@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"])
def test_every_workload_kind_is_enforced(world: dict[str, Any], hook: str, kind: str) -> None:
    host = world["host"]
    assert answer(hook, review(workload(kind, f"{host}/app/signed:1")))["allowed"] is True
    assert answer(hook, review(workload(kind, f"{host}/app/unsigned:1")))["allowed"] is False


@pytestmark_slow
def test_audit_scope_namespaces_exemptions_short_names_and_other_kinds(world: dict[str, Any], hook: str) -> None:
    host = world["host"]
    soft = answer(hook, review(pod(f"{host}/soft/unsigned:1")))  # scope with enforce: false
    assert soft["allowed"] is True
    assert any("would deny" in w and "enforce: false" in w for w in soft["warnings"]), soft
    team = f"{host}/team/signed:1"
    assert answer(hook, review(pod(team), namespace="team-a"))["allowed"] is True  # its namespace policy
    other = answer(hook, review(pod(team), namespace="default"))  # the cluster policy: default reject
    assert other["allowed"] is False and "rejects every image" in other["status"]["message"]
    assert answer(hook, review(pod(f"{host}/app/unsigned:1"), namespace="kube-system"))["allowed"] is True
    short = answer(hook, review(pod("nginx:1.25")))
    assert short["allowed"] is False and "short name" in short["status"]["message"] \
        and "unqualified-search-registries" in short["status"]["message"]
    cm = k8s.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=k8s.V1ObjectMeta(name="c"), data={"a": "b"})
    other_kind = answer(hook, review(cm))
    assert other_kind["allowed"] is True and "not a kind" in other_kind["warnings"][0]
    debug = answer(hook, review(pod(f"{host}/app/signed:1", ephemeral=(f"{host}/app/unsigned:1",)),
                                sub_resource="ephemeralcontainers", operation="UPDATE"))
    assert debug["allowed"] is False and f"{host}/app/unsigned:1" in debug["status"]["message"]  # kubectl debug
    status = answer(hook, review(pod(f"{host}/app/unsigned:1"), sub_resource="status", operation="UPDATE"))
    assert status["allowed"] is True  # a status update runs nothing new
    gone = answer(hook, review(pod(f"{host}/app/unsigned:1"), operation="DELETE"))
    assert gone["allowed"] is True  # nothing is deployed by a DELETE
    upd = answer(hook, review(pod(f"{host}/app/unsigned:1"), operation="UPDATE", old=pod(f"{host}/app/signed:1")))
    assert upd["allowed"] is False


@pytestmark_slow
def test_whole_webhook_in_audit_mode_allows_with_warnings(world: dict[str, Any]) -> None:
    host = world["host"]
    with webhook(world, "--audit") as base:
        got = answer(base, review(pod(f"{host}/app/unsigned:1", "docker.io/library/busybox:1")))
    assert got["allowed"] is True
    assert sum("would deny" in w and "audit mode" in w for w in got["warnings"]) == 2, got


@pytestmark_slow
def test_mutate_pins_tags_to_the_checked_digest(world: dict[str, Any], hook: str) -> None:
    host, dg = world["host"], world["digests"]
    by_digest = f"{host}/app/other@{dg['app/other:1']}"
    obj = workload("Deployment", f"{host}/app/signed:1", by_digest, init=(f"{host}/app/signed:1",))
    got = answer(hook, review(obj), "/mutate")
    assert got["allowed"] is True and got["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(got["patch"]))
    pinned = f"{host}/app/signed@{dg['app/signed:1']}"
    assert patch == [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": pinned},
                     {"op": "replace", "path": "/spec/template/spec/initContainers/0/image", "value": pinned}]
    # Applying the patch (RFC 6902 replace) gives a Deployment whose pods run exactly what was checked; checking
    # it again needs no tag and passes.
    doc = _API.sanitize_for_serialization(obj)
    for op in patch:
        *parents, last = op["path"].strip("/").split("/")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = op["value"]
    again = review(obj)
    again["request"]["object"] = doc
    assert answer(hook, again)["allowed"] is True
    assert "patch" not in answer(hook, review(obj), "/validate")  # a validating answer never patches
    denied = answer(hook, review(workload("Deployment", f"{host}/app/unsigned:1")), "/mutate")
    assert denied["allowed"] is False and "patch" not in denied


@pytestmark_slow
def test_bad_input_gets_a_clear_http_error_or_a_denial(world: dict[str, Any], hook: str) -> None:
    host = world["host"]
    r = post(hook, b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    # Oversized: refused from Content-Length alone, before a byte of the body is read (a client still writing a
    # body the server will never read may see the connection closed instead of the answer, so send the head only).
    assert _raw_status(hook, f"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {3 * 1024 * 1024 + 1}\r\n\r\n") == 413
    r = get(hook, "/validate")
    assert r.status_code == 405
    assert get(hook, "/nope").status_code == 404
    broken = review(workload("Deployment", f"{host}/app/signed:1"))
    del broken["request"]["object"]["spec"]["template"]
    got = answer(hook, broken)
    assert got["allowed"] is False and got["status"]["code"] == 400 and "spec.template" in got["status"]["message"]
    noimage = review(pod(f"{host}/app/signed:1"))
    del noimage["request"]["object"]["spec"]["containers"][0]["image"]
    got = answer(hook, noimage)
    assert got["allowed"] is False and "has no image" in got["status"]["message"]


def _raw_status(base: str, head: str) -> int:
    """The status line's code for a raw request head sent over TLS (no body)."""
    host, port = base.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=_CA[base])
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(head.encode())
        return int(s.recv(4096).split(b" ", 2)[1])


@pytestmark_slow
def test_pod_with_100_containers(world: dict[str, Any], hook: str) -> None:
    host, dg = world["host"], world["digests"]
    images = [f"{host}/app/signed:1", f"{host}/app/signed@{dg['app/signed:1']}",
              f"{host}/app/other@{dg['app/other:1']}", f"{host}/app/other:1"] * 25
    started = time.monotonic()
    got = answer(hook, review(pod(*images)), "/mutate")
    assert time.monotonic() - started < 10
    assert got["allowed"] is True
    assert len(json.loads(base64.b64decode(got["patch"]))) == 50  # every tag pinned, digests left alone
    images[77] = f"{host}/app/unsigned:1"
    got = answer(hook, review(pod(*images)))
    assert got["allowed"] is False and f"{host}/app/unsigned:1" in got["status"]["message"]


@pytestmark_slow
def test_hanging_registry_is_answered_within_the_deadline(world: dict[str, Any], hook: str) -> None:
    image = f"{world['hang']}/x/y:1"
    started = time.monotonic()
    got = answer(hook, review(pod(image)))
    took = time.monotonic() - started
    assert took < 3 + 1.5, took  # --deadline 3, well inside the API server's timeoutSeconds (10)
    assert got["allowed"] is False and "review deadline" in got["status"]["message"]
    # In an audit-mode scope (enforce: false) the node accepts the image anyway: a warning, not a denial.
    soft = answer(hook, review(pod(f"{world['hang']}/soft/y:1")))
    assert soft["allowed"] is True and "enforce: false" in soft["warnings"][0] and "could not check" in \
        soft["warnings"][0], soft
    # The server is still healthy and answers the next review at once.
    assert answer(hook, review(pod(f"{world['host']}/app/signed:1")))["allowed"] is True
    with webhook(world, "--on-error", "allow", "--deadline", "1") as base:
        started = time.monotonic()
        got = answer(base, review(pod(image)))
        assert time.monotonic() - started < 2.5
    assert got["allowed"] is True and "could not check" in got["warnings"][0] and "on-error: allow" in \
        got["warnings"][0]


@pytestmark_slow
def test_metrics_and_health(world: dict[str, Any]) -> None:
    host = world["host"]
    with webhook(world) as base:
        answer(base, review(pod(f"{host}/app/signed:1")))
        answer(base, review(pod(f"{host}/app/unsigned:1")))
        post(base, b"junk")
        text = get(base, "/metrics").text
        assert get(base, "/healthz").text == "ok\n"
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("atomicsig_webhook_reviews_total", (("endpoint", "validate"), ("verdict", "allowed")))] == 1
    assert samples[("atomicsig_webhook_reviews_total", (("endpoint", "validate"), ("verdict", "denied")))] == 1
    assert samples[("atomicsig_webhook_reviews_total", (("endpoint", "validate"), ("verdict", "invalid")))] == 1
    assert samples[("atomicsig_webhook_review_seconds_count", (("endpoint", "validate"),))] == 2


def _served_cert(base: str) -> str:
    host, port = base.removeprefix("https://").split(":")
    return ssl.get_server_certificate((host, int(port)), timeout=10)


@pytestmark_slow
def test_tls_certificate_is_reloaded_without_restart(world: dict[str, Any], tmp_path: Path) -> None:
    live = tmp_path / "live"
    cert, key, _ = self_signed(tmp_path / "one")
    live.mkdir()
    (live / "tls.crt").write_bytes(cert.read_bytes())
    (live / "tls.key").write_bytes(key.read_bytes())
    with webhook(world, "--tls-reload-interval", "0.2", cert=live / "tls.crt", key=live / "tls.key") as base:
        first = _served_cert(base)
        assert post(base, review(pod(f"{world['host']}/app/signed:1")), cert=live / "tls.crt").status_code == 200
        # Mid-rotation (new certificate, old key): the old pair keeps serving.
        cert2, key2, _ = self_signed(tmp_path / "two")
        (live / "tls.crt.new").write_bytes(cert2.read_bytes())
        os.replace(live / "tls.crt.new", live / "tls.crt")
        time.sleep(1.0)
        assert _served_cert(base) == first
        (live / "tls.key.new").write_bytes(key2.read_bytes())
        os.replace(live / "tls.key.new", live / "tls.key")
        deadline = time.monotonic() + 10
        while _served_cert(base) == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _served_cert(base) != first
        # Verified against the new certificate only: the API server's caBundle rotation works without a restart.
        assert post(base, review(pod(f"{world['host']}/app/signed:1")), cert=cert2).status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            post(base, review(pod(f"{world['host']}/app/signed:1")), cert=cert)


@pytestmark_slow
def test_slow_clients_do_not_stop_reviews(world: dict[str, Any], hook: str) -> None:
    """The hardened server's guard: 40 connections that never finish a request (held TLS handshakes and heads)
    leave reviews and /healthz answering."""
    socks = []
    try:
        port = int(hook.rsplit(":", 1)[1])
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"\x16\x03\x01")  # the start of a TLS record, never finished
            socks.append(s)
        started = time.monotonic()
        assert answer(hook, review(pod(f"{world['host']}/app/signed:1")))["allowed"] is True
        assert get(hook, "/healthz").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for s in socks:
            s.close()


def test_stalled_tls_handshakes_do_not_block_the_accept_loop(tmp_path: Path) -> None:
    """The hardened server under TLS (serve and webhook): stock cheroot ran each handshake in its one accept
    thread, bounded only by the 10 s idle timeout, so 20 clients sending the first bytes of a ClientHello held
    every new connection back for minutes. Now the guard drives handshakes without blocking; stalled ones are
    closed at the head deadline."""
    from tests.infra import run_wsgi

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    cert, key, _ = self_signed(tmp_path / "tls")
    with run_wsgi(app, tls=(str(cert), str(key))) as base:
        port = int(base.rsplit(":", 1)[1])
        socks = []
        try:
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"\x16\x03\x01")
                socks.append(s)
            started = time.monotonic()
            for _ in range(3):
                assert requests.get(base + "/healthz", verify=str(cert), timeout=10).text == "ok\n"
            assert time.monotonic() - started < 3
        finally:
            for s in socks:
                s.close()


def test_deploy_manifests_are_valid_kubernetes_objects_and_match_the_webhook() -> None:
    """deploy/webhook/: each document deserializes into its kubernetes client model; the webhook configurations
    call the paths the server answers, speak v1 only, exempt kube-system and the webhook's own namespace, select
    exactly the kinds the webhook reads, and leave the API server's timeout above the webhook's --deadline."""
    from atomicsig.policy import schema
    from atomicsig.webhook import config

    deploy = Path(__file__).resolve().parent.parent / "deploy" / "webhook"
    docs = {d["kind"]: d for f in sorted(deploy.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())}
    deser = _API._ApiClient__deserialize  # type: ignore[attr-defined]
    dep = deser(docs["Deployment"], "V1Deployment")
    args = dep.spec.template.spec.containers[0].args
    config_path = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
    mounts = {m.name: m.mount_path for m in dep.spec.template.spec.containers[0].volume_mounts}
    volume = next(v for v in dep.spec.template.spec.volumes if v.config_map is not None)
    assert volume.config_map.name == docs["ConfigMap"]["metadata"]["name"]
    assert Path(config_path).parent == Path(mounts[volume.name])  # the config is the ConfigMap's webhook.yaml
    settings = config.loads(docs["ConfigMap"]["data"][Path(config_path).name], "webhook.yaml",
                            Path(config_path).parent)
    deadline = settings["deadline"]
    assert settings["pin_digests"] is True and "kube-system" in settings["exempt"]
    assert Path(settings["policy_file"]).parent == Path(config_path).parent  # the policy.yaml beside it
    own_ns = docs["Namespace"]["metadata"]
    assert own_ns["name"] in settings["exempt"]
    handled = {"pods", "replicationcontrollers", "deployments", "statefulsets", "daemonsets", "replicasets", "jobs",
               "cronjobs"}
    for kind, model, path in (("ValidatingWebhookConfiguration", "V1ValidatingWebhookConfiguration", "/validate"),
                              ("MutatingWebhookConfiguration", "V1MutatingWebhookConfiguration", "/mutate")):
        (hook,) = deser(docs[kind], model).webhooks
        assert hook.admission_review_versions == ["v1"] and hook.side_effects == "None"
        assert hook.failure_policy == "Fail" and hook.timeout_seconds > deadline
        assert hook.client_config.service.path == path
        assert hook.client_config.service.name == docs["Service"]["metadata"]["name"]
        exprs = {(e.key, e.operator, tuple(e.values)) for e in hook.namespace_selector.match_expressions}
        assert ("kubernetes.io/metadata.name", "NotIn", ("kube-system",)) in exprs
        (label, value), = own_ns["labels"].items()
        assert (label, "NotIn", (value,)) in exprs
        resources = {r.split("/")[0] for rule in hook.rules for r in rule.resources}
        assert resources == handled
    cm = docs["ConfigMap"]["data"]
    spec = schema.loads(cm["policy.yaml"], "policy.yaml")  # the example policy is a valid policy YAML
    assert "team-a" in spec.namespaces


@pytestmark_slow
def test_decision_cache_holds_decided_digests_only(world: dict[str, Any], tmp_path: Path) -> None:
    """--cache-ttl: an image given by digest is evaluated once per TTL; a tag is resolved at every review (it can
    move); the cached answer expires."""
    from atomicsig.cli.webhook import load_policies
    from atomicsig.webhook.review import Reviewer, WebhookSettings

    host, dg = world["host"], world["digests"]
    cluster, namespaces = load_policies(str(world["policy"]), None, str(tmp_path))
    reviewer = Reviewer(cluster, namespaces, WebhookSettings(tls_verify=False, cache_ttl=1.0))
    try:
        def decide(*images: str) -> bool:
            doc = json.dumps(review(pod(*images))).encode()
            return reviewer.review(admission.parse_review(doc)).allowed

        by_digest = f"{host}/app/signed@{dg['app/signed:1']}"
        unsigned = f"{host}/app/unsigned@{dg['app/unsigned:1']}"
        assert decide(by_digest) and not decide(unsigned) and reviewer.cache_hits == 0
        assert decide(by_digest) and not decide(unsigned) and reviewer.cache_hits == 2  # refusals are kept too
        assert decide(f"{host}/app/signed:1") and decide(f"{host}/app/signed:1") and reviewer.cache_hits == 2
        time.sleep(1.2)
        assert decide(by_digest) and reviewer.cache_hits == 2  # expired: evaluated again
    finally:
        reviewer.close()


def test_cli_refuses_bad_configuration_before_listening(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with one line, nothing bound: a broken policy YAML (file:line), a namespace name CRI-O could not use,
    a certificate without its key, a certificate that does not load."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: reject\nscopes:\n  registry.example.com/a: {acton: accept}\n")
    code, _, err = cli("webhook", "-f", str(bad), "--listen", "127.0.0.1:0")
    assert code == 2 and "bad.yaml:3" in err, err
    good = tmp_path / "good.yaml"
    good.write_text("default: reject\n")
    code, _, err = cli("webhook", "-f", str(good), "--exempt-namespace", "Kube_System")
    assert code == 2 and "Kube_System" in err, err
    code, _, err = cli("webhook", "-f", str(good), "--tls-cert", str(tmp_path / "c.pem"))
    assert code == 2 and "--tls-key" in err, err
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    code, _, err = cli("webhook", "-f", str(good), "--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "c.pem"),
                       "--tls-key", str(tmp_path / "k.pem"))
    assert code == 2 and "cannot load TLS certificate" in err, err


# ---- policy reload and the config file (issue 17) ------------------------------------------------------------------


def _configmap_update(mount: Path, files: dict[str, str | bytes]) -> None:
    """What the kubelet does to a ConfigMap volume: the files in a new timestamped directory, then the ``..data``
    symlink swapped to it by rename; the visible names are links through ``..data`` (created once)."""
    version = mount / f"..{time.monotonic_ns()}"
    version.mkdir(parents=True)
    for name, data in files.items():
        (version / name).write_bytes(data.encode() if isinstance(data, str) else data)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(version.name)
    os.replace(tmp, mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")


def _metric(base: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = get(base, "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _wait_for(check: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytestmark_slow
def test_config_file_and_policy_reload_from_a_configmap(world: dict[str, Any], tmp_path: Path) -> None:
    """``--config`` from a ConfigMap-style mount; the policy beside it is watched: the kubelet's ``..data`` swap
    reloads it (the cached decision for a digest goes with the old policy), a broken policy keeps the previous one
    served with one log line and a metric, and a flag given on the command line wins over the file."""
    host, dg = world["host"], world["digests"]
    signed = {"signed-by": "trusted", "lookaside": f"file://{world['work'] / 'sigstore'}"}
    key = (world["work"] / "trusted.gpg").read_bytes()

    def policy(scope: dict[str, Any]) -> str:
        return yaml.safe_dump({"default": "reject", "keys": {"trusted": {"file": "trusted.gpg"}},
                               "scopes": {f"{host}/app": scope}})
    config = yaml.safe_dump({"policy": "policy.yaml", "listen": "127.0.0.1:1", "cache-ttl": 3600,
                             "policy-reload-interval": 0.2, "exempt-namespaces": ["kube-system"], "deadline": 5})
    mount = tmp_path / "config"
    _configmap_update(mount, {"webhook.yaml": config, "policy.yaml": policy(signed), "trusted.gpg": key})
    unsigned = review(pod(f"{host}/app/unsigned@{dg['app/unsigned:1']}"))
    with webhook(world, "--config", str(mount / "webhook.yaml")) as base:  # --listen given: wins over the file
        log = Path(world["work"]) / f"webhook-{base.rsplit(':', 1)[1]}.log"
        assert answer(base, unsigned)["allowed"] is False
        assert answer(base, review(pod(f"{host}/app/unsigned:1"), namespace="kube-system"))["allowed"] is True
        for i in range(5):  # a file beside the policy that is not part of it (a log, say): no reload
            (mount / "notes.txt").write_text("x" * i)
            time.sleep(0.15)
        assert _metric(base, "atomicsig_webhook_policy_reloads_total") == 0
        _configmap_update(mount, {"webhook.yaml": config, "policy.yaml": policy({"action": "accept"}),
                                  "trusted.gpg": key})
        _wait_for(lambda: answer(base, unsigned)["allowed"] is True, "the new policy was not loaded")
        assert _metric(base, "atomicsig_webhook_policy_reloads_total") == 1
        _configmap_update(mount, {"webhook.yaml": config, "policy.yaml": "default: reject\nscopes: [\n",
                                  "trusted.gpg": key})
        _wait_for(lambda: _metric(base, "atomicsig_webhook_policy_reload_errors_total") == 1, "no reload error")
        assert answer(base, unsigned)["allowed"] is True  # still the previous policy
        assert answer(base, review(pod(f"{host}/app/signed:1")))["allowed"] is True
        failed = [line for line in log.read_text().splitlines() if "policy reload" in line and "failed" in line]
        assert len(failed) == 1 and "still serving the previous policy" in failed[0] and "policy.yaml:" in \
            failed[0], failed
        time.sleep(0.5)  # one line per change, not one per check
        assert _metric(base, "atomicsig_webhook_policy_reload_errors_total") == 1


def signed_policy(world: dict[str, Any], tmp_path: Path) -> Path:
    """A policy file of its own in ``tmp_path`` (tests rewrite it): ``<host>/app`` signed by the world's key,
    everything else rejected."""
    live = tmp_path / "policy.yaml"
    (tmp_path / "trusted.gpg").write_bytes((world["work"] / "trusted.gpg").read_bytes())
    signed = {"signed-by": "trusted", "lookaside": f"file://{world['work'] / 'sigstore'}"}
    live.write_text(yaml.safe_dump({"default": "reject", "keys": {"trusted": {"file": "trusted.gpg"}},
                                    "scopes": {f"{world['host']}/app": signed}}))
    return live


@pytestmark_slow
def test_sighup_reloads_the_policy(world: dict[str, Any], tmp_path: Path) -> None:
    """With watching off (--policy-reload-interval 0) a changed file is ignored until SIGHUP."""
    host, dg = world["host"], world["digests"]
    live = signed_policy(world, tmp_path)
    doc = review(pod(f"{host}/app/signed@{dg['app/signed:1']}"))
    with webhook(world, "--policy-reload-interval", "0", policy=live) as base:
        assert answer(base, doc)["allowed"] is True
        live.write_text("default: reject\n")
        time.sleep(1)
        assert answer(base, doc)["allowed"] is True  # not watched: the old policy (and its cached answer)
        _PROCS[base].send_signal(signal.SIGHUP)
        _wait_for(lambda: answer(base, doc)["allowed"] is False, "SIGHUP did not reload the policy")


def test_config_file_errors_are_file_line_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Unknown keys, wrong types, values outside the flag's range, bad namespace names: file:line, exit 2, before
    anything listens; no policy anywhere is a usage error."""
    (tmp_path / "policy.yaml").write_text("default: reject\n")
    cases = {"listen: 127.0.0.1:0\nlisen: x\n": ("w.yaml:2", "did you mean"),
             "policy: policy.yaml\ndeadline: 30\n": ("w.yaml:2", "between 0.1 and 29"),
             "policy: policy.yaml\nworkers: many\n": ("w.yaml:2", "integer"),
             "policy: policy.yaml\nmode: enforcing\n": ("w.yaml:2", "enforce, audit"),
             "policy: policy.yaml\nexempt-namespaces: [Kube_System]\n": ("w.yaml:2", "Kube_System"),
             "policy: policy.yaml\npolicy: other.yaml\n": ("w.yaml:2", "duplicate"),
             "listen: 127.0.0.1:0\n": ("", "policy:"),
             "policy: missing.yaml\nlisten: 127.0.0.1:0\n": ("missing.yaml", "")}
    for text, (where, what) in cases.items():
        (tmp_path / "w.yaml").write_text(text)
        code, _, err = cli("webhook", "--config", str(tmp_path / "w.yaml"))
        assert code == 2 and where in err and what in err, (text, err)


def test_config_file_values_reach_the_settings() -> None:
    """Every key maps to the flag's parameter; relative paths start at the config file's directory."""
    from atomicsig.cli.webhook import webhook as command
    from atomicsig.webhook.config import KEYS, loads

    params = {p.name for p in command.params}
    assert {k.param for k in KEYS.values()} <= params
    got = loads("policy: p.yaml\nmode: audit\ntls-verify: false\nexempt-namespaces: [a, b]\ncache-ttl: 0\n",
                "w.yaml", Path("/etc/atomicsig"))
    assert got == {"policy_file": "/etc/atomicsig/p.yaml", "audit_mode": True, "tls_verify": False,
                   "exempt": ("a", "b"), "cache_ttl": 0}


@pytestmark_slow
def test_concurrent_reviews_share_one_check_per_digest(world: dict[str, Any], tmp_path: Path) -> None:
    """Single flight: when a cached digest expires under load, the reviews in flight wait for one check instead of
    each running its own (the stampede that gave bench/load_webhook.py a 0.2-0.9 s tail every cache_ttl)."""
    import threading

    from atomicsig.cli.webhook import load_policies
    from atomicsig.webhook.review import Reviewer, WebhookSettings

    cluster, namespaces = load_policies(str(world["policy"]), None, str(tmp_path))
    reviewer = Reviewer(cluster, namespaces, WebhookSettings(tls_verify=False, cache_ttl=60, workers=8))
    calls: list[str] = []
    check = reviewer.check_image

    def counted(image: str, policy: Any) -> Any:
        calls.append(image)
        time.sleep(0.2)  # a slow signature store: every review arrives while the first check runs
        return check(image, policy)
    reviewer.check_image = counted  # type: ignore[method-assign]
    image = f"{world['host']}/app/signed@{world['digests']['app/signed:1']}"
    start = threading.Barrier(20)
    allowed: list[bool] = []

    def one() -> None:
        doc = json.dumps(review(pod(image))).encode()
        start.wait()
        allowed.append(reviewer.review(admission.parse_review(doc)).allowed)
    try:
        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        reviewer.close()
    assert allowed == [True] * 20 and calls == [image]


@pytestmark_slow
def test_review_deadline_frees_the_workers_held_by_a_hanging_registry(world: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """The review deadline reaches the registry: tag resolutions on a registry that accepts connections and never
    answers end at the deadline of the review that asked (net/fetch.deadline), not at the registry client's own
    30 s timeouts (x 4 attempts x 2 schemes) long after the review was answered. With 2 workers and 4 such reviews
    both workers were held, so the next review of a good image waited for a worker and missed its deadline too."""
    import threading

    from atomicsig.cli.webhook import load_policies
    from atomicsig.webhook.review import Reviewer, WebhookSettings

    cluster, namespaces = load_policies(str(world["policy"]), None, str(tmp_path))
    reviewer = Reviewer(cluster, namespaces, WebhookSettings(tls_verify=False, workers=2, deadline=1.0))

    def decide(*images: str) -> Any:
        return reviewer.review(admission.parse_review(json.dumps(review(pod(*images))).encode()))
    try:
        hanging: list[Any] = []
        threads = [threading.Thread(target=lambda i=i: hanging.append(decide(f"{world['hang']}/x/y:{i}")))
                   for i in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - started < 2.5
        assert [o.allowed for o in hanging] == [False] * 4 and all("review deadline" in o.message or
                                                                   "cannot reach" in o.message for o in hanging)
        time.sleep(0.5)  # the workers end their requests at the deadline: free again
        t0 = time.monotonic()
        good = decide(f"{world['host']}/app/signed:1")
        assert good.allowed, good.message
        assert time.monotonic() - t0 < 0.9
    finally:
        reviewer.close()


@pytestmark_slow
def test_cached_entry_is_refreshed_ahead_without_making_reviews_wait(world: dict[str, Any], tmp_path: Path) -> None:
    """Refresh-ahead: a hit in the last fifth of an entry's cache_ttl is answered from the entry at once and starts
    one background check; the refreshed entry answers after the old one's expiry, so under steady load no review
    waits for a re-check (before: every cache_ttl, the reviews in flight all waited for the shared check, the p99+
    tail). No answer older than cache_ttl is served: an entry nobody refreshed expires and is checked again."""
    from atomicsig.cli.webhook import load_policies
    from atomicsig.webhook.review import Reviewer, WebhookSettings

    cluster, namespaces = load_policies(str(world["policy"]), None, str(tmp_path))
    reviewer = Reviewer(cluster, namespaces, WebhookSettings(tls_verify=False, cache_ttl=2.0))
    calls: list[float] = []
    check = reviewer.check_image

    def slow(image: str, policy: Any) -> Any:
        calls.append(time.monotonic())
        time.sleep(0.6)  # a slow signature store
        return check(image, policy)
    reviewer.check_image = slow  # type: ignore[method-assign]
    image = f"{world['host']}/app/signed@{world['digests']['app/signed:1']}"

    def timed() -> float:
        t0 = time.monotonic()
        assert reviewer.review(admission.parse_review(json.dumps(review(pod(image))).encode())).allowed
        return time.monotonic() - t0
    try:
        assert timed() >= 0.6 and len(calls) == 1  # a miss waits for its check
        first = calls[0]
        time.sleep(max(0.0, first + 0.6 + 1.7 - time.monotonic()))  # the entry's last fifth (expires at ~2.6)
        assert timed() < 0.3  # answered from the entry, and one refresh started on the pool
        _wait_for(lambda: len(calls) == 2, "the background refresh", timeout=2)
        assert timed() < 0.3 and len(calls) == 2  # single flight: no second refresh
        time.sleep(max(0.0, first + 0.6 + 2.2 - time.monotonic()))  # the first entry has expired; the refresh landed
        assert timed() < 0.3 and len(calls) == 2
        time.sleep(2.1)  # nobody refreshed it in its last fifth: expired, checked again (waits)
        assert timed() >= 0.6 and len(calls) == 3
    finally:
        reviewer.close()


@pytestmark_slow
def test_pinning_leaves_images_whose_scope_matches_the_exact_tag(world: dict[str, Any], tmp_path: Path) -> None:
    """--pin-digests under ``identity: {type: matchExact}``: the signature claims ``name:tag``, a pull of
    ``name@digest`` is refused by the node (real skopeo under the policy.json `policy apply` writes), so the webhook
    allows the pod as decided, does not pin that image, and says why; an image under the default identity in the
    same pod is still pinned. Before, the patch pinned both, and the node refused the pinned one."""
    from atomicsig.cli.webhook import load_policies
    from atomicsig.webhook.review import Reviewer, WebhookSettings
    from tests.infra import apply_policy, skopeo_pull

    host, dg = world["host"], world["digests"]
    signed = {"signed-by": "trusted", "lookaside": f"file://{world['work'] / 'sigstore'}"}
    policy = Path(world["work"]) / "policy-exact.yaml"
    policy.write_text(yaml.safe_dump({
        "default": "reject", "keys": {"trusted": {"file": "trusted.gpg"}},
        "scopes": {f"{host}/app/signed": {**signed, "identity": {"type": "matchExact"}}, f"{host}/team": signed}}))
    root = tmp_path / "node"
    apply_policy(policy, root)
    pol, regd = root / "etc/containers/policy.json", root / "etc/containers/registries.d"
    exact, plain = f"{host}/app/signed:1", f"{host}/team/signed:1"
    assert skopeo_pull(exact, pol, regd, tmp_path).returncode == 0  # the node accepts the tag ...
    assert skopeo_pull(f"{host}/app/signed@{dg['app/signed:1']}", pol, regd, tmp_path).returncode != 0  # not the pin
    assert skopeo_pull(f"{host}/team/signed@{dg['team/signed:1']}", pol, regd, tmp_path).returncode == 0

    cluster, namespaces = load_policies(str(policy), None, str(tmp_path / "staged"))
    reviewer = Reviewer(cluster, namespaces, WebhookSettings(tls_verify=False, pin_digests=True))
    try:
        obj = workload("Deployment", exact, plain)
        out = reviewer.review(admission.parse_review(json.dumps(review(obj)).encode()), mutate=True)
        assert out.allowed, out.message
        assert out.patch == [{"op": "replace", "path": "/spec/template/spec/containers/1/image",
                              "value": f"{host}/team/signed@{dg['team/signed:1']}"}]
        why = [w for w in out.warnings if "not pinned" in w]
        assert len(why) == 1 and why[0].startswith(f"atomicsig: image {exact} not pinned: the node's policy would "
                                                   "refuse it by digest"), out.warnings
        validated = reviewer.review(admission.parse_review(json.dumps(review(obj)).encode()))
        assert validated.allowed and not validated.patch
    finally:
        reviewer.close()


def test_review_log_lines_are_written_by_one_writer_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-review line is queued by the request thread and written by the writer thread (no handler lock on
    the request path), in the --log-format chosen, and nothing queued is lost when the writer stops at exit."""
    import logging
    import logging.handlers
    import threading

    from atomicsig.cli.webhook import _setup_logging

    lg = logging.getLogger("atomicsig.webhook")
    before = list(lg.handlers)
    writer = _setup_logging("json")
    try:
        assert all(isinstance(h, logging.handlers.QueueHandler) for h in lg.handlers if h not in before)
        threads = [threading.Thread(target=lambda i=i: lg.info("review %s %s", f"uid-{i}", "allowed"))
                   for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        writer.stop()
        for h in [h for h in lg.handlers if h not in before]:
            lg.removeHandler(h)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert sorted(d["msg"] for d in lines) == sorted(f"review uid-{i} allowed" for i in range(20))
