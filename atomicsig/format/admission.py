"""The Kubernetes ``AdmissionReview`` (``admission.k8s.io/v1``) as the webhook reads and answers it (issue 17).

Pure: bytes in, values out. Field names and shapes follow k8s.io/api ``admission/v1/types.go`` (read at commit
10b39a39 of github.com/kubernetes/api): ``AdmissionReview{apiVersion, kind, request, response}``;
``AdmissionRequest{uid, kind{group,version,kind}, resource, subResource, name, namespace, operation, userInfo,
object, oldObject, dryRun, options}``; ``AdmissionResponse{uid, allowed, status, patch, patchType, auditAnnotations,
warnings}``. The rules this module keeps:

* the response's ``uid`` "must be copied over from the corresponding AdmissionRequest" and the review is answered
  in the ``apiVersion``/``kind`` it came in (the API server refuses any other);
* ``status`` is a ``metav1.Status`` and "IS NOT consulted in any way if allowed is true", so a denial carries its
  reason there (``code`` 403, ``reason`` ``Forbidden``) and an allowed review carries its remarks in ``warnings``;
* warnings: "Limit warnings to 120 characters if possible. Warnings over 256 characters and large numbers of
  warnings may be truncated": each is cut at :data:`MAX_WARNING` here, and their number at :data:`MAX_WARNINGS`;
* ``patch`` is base64 of an RFC 6902 JSON Patch with ``patchType`` ``JSONPatch`` (the only type defined); only a
  mutating webhook may return one.

Where the pod spec sits in each kind (core/v1 and apps/v1, batch/v1 types.go): a Pod's ``spec``; the ``template``
of Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers and Jobs (``spec.template.spec``); a
CronJob's ``spec.jobTemplate.spec.template.spec``. Each pod spec has ``containers``, ``initContainers`` and
``ephemeralContainers``, each with ``image``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import InputError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
#: Cut point for one warning (types.go: "over 256 characters ... may be truncated").
MAX_WARNING = 256
#: More warnings than this are folded into one last "and N more" (types.go: "large numbers ... may be truncated").
MAX_WARNINGS = 50
#: (API group, kind) → the JSON path of the pod spec in the object; only ``v1`` of each group is handled (the
#: webhook configuration's ``matchPolicy: Equivalent`` converts other versions to the one in its rules).
POD_SPEC_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): ("spec",),
    ("", "ReplicationController"): ("spec", "template", "spec"),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


@dataclass(frozen=True)
class ContainerImage:
    """One container's image and where it sits: ``pointer`` is the RFC 6901 path of its ``image`` field."""

    container: str  # "containers[0] (web)"
    image: str
    pointer: str


@dataclass(frozen=True)
class Request:
    """The parts of an AdmissionRequest the webhook decides on."""

    api_version: str
    uid: str
    group: str
    version: str
    kind: str
    namespace: str
    name: str
    operation: str
    sub_resource: str
    dry_run: bool
    object: Any

    @property
    def kind_label(self) -> str:
        return f"{self.group}/{self.version}/{self.kind}" if self.group else f"{self.version}/{self.kind}"

    @property
    def handled(self) -> bool:
        """A kind whose pod spec this module knows (only version v1)."""
        return self.version == "v1" and (self.group, self.kind) in POD_SPEC_PATHS


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, required: bool = True,
           default: Any = None) -> Any:
    if key not in doc or doc[key] is None:
        if required:
            raise InputError(f"AdmissionReview: {where}.{key} is missing")
        return default
    if not isinstance(doc[key], kind):
        raise InputError(f"AdmissionReview: {where}.{key} has the wrong type")
    return doc[key]


def parse_review(body: bytes) -> Request:
    """The request of an ``AdmissionReview`` body; :class:`InputError` (one line) for anything that is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputError("AdmissionReview: body is not JSON") from None
    if not isinstance(doc, dict):
        raise InputError("AdmissionReview: body is not a JSON object")
    api_version = _field(doc, "apiVersion", str, "review")
    if api_version != API_VERSION or doc.get("kind") != KIND:
        raise InputError(f"AdmissionReview: expected apiVersion {API_VERSION} kind {KIND}, got "
                         f"{str(api_version)[:60]!r} {str(doc.get('kind'))[:60]!r} (admissionReviewVersions: [v1])")
    req = _field(doc, "request", dict, "review")
    uid = _field(req, "uid", str, "request")
    if not uid:
        raise InputError("AdmissionReview: request.uid is empty")
    gvk = _field(req, "kind", dict, "request")
    return Request(
        api_version=api_version, uid=uid,
        group=_field(gvk, "group", str, "request.kind", required=False, default=""),
        version=_field(gvk, "version", str, "request.kind"),
        kind=_field(gvk, "kind", str, "request.kind"),
        namespace=_field(req, "namespace", str, "request", required=False, default=""),
        name=_field(req, "name", str, "request", required=False, default=""),
        operation=_field(req, "operation", str, "request"),
        sub_resource=_field(req, "subResource", str, "request", required=False, default=""),
        dry_run=bool(_field(req, "dryRun", bool, "request", required=False, default=False)),
        object=req.get("object"))


def _escape(token: str) -> str:
    """RFC 6901 §3: ``~`` → ``~0``, ``/`` → ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def container_images(request: Request) -> list[ContainerImage]:
    """Every container, init container and ephemeral container image of the request's object (a handled kind).

    A missing or non-string ``image`` is listed with ``image`` "" so the caller refuses it by name: the API server
    validates pods, but a template is only validated when its pods are created, and an answer must say why."""
    path = POD_SPEC_PATHS[(request.group, request.kind)]
    node: Any = request.object
    where = "object"
    for key in path:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            raise InputError(f"AdmissionReview: {where}.{key} is missing or not an object")
        node, where = node[key], f"{where}.{key}"
    base = "/" + "/".join(_escape(k) for k in path)
    out: list[ContainerImage] = []
    for lst in CONTAINER_LISTS:
        items = node.get(lst)
        if items is None:
            continue
        if not isinstance(items, list):
            raise InputError(f"AdmissionReview: {where}.{lst} is not a list")
        for i, c in enumerate(items):
            if not isinstance(c, dict):
                raise InputError(f"AdmissionReview: {where}.{lst}[{i}] is not an object")
            name, image = c.get("name"), c.get("image")
            name, image = (name if isinstance(name, str) else ""), (image if isinstance(image, str) else "")
            out.append(ContainerImage(f"{lst}[{i}]" + (f" ({name})" if name else ""), image,
                                      f"{base}/{lst}/{i}/image"))
    return out


def _warning(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[:MAX_WARNING - 1] + "…"


def response(request_uid: str, *, allowed: bool, message: str = "", code: int = 403,
             warnings: list[str] | None = None, patch: list[dict[str, Any]] | None = None,
             audit_annotations: dict[str, str] | None = None, api_version: str = API_VERSION) -> dict[str, Any]:
    """An ``AdmissionReview`` carrying the response to request ``request_uid`` (types.go field names)."""
    resp: dict[str, Any] = {"uid": request_uid, "allowed": allowed}
    if not allowed:
        resp["status"] = {"code": code, "reason": "Forbidden" if code == 403 else "BadRequest",
                          "message": message, "status": "Failure"}
    elif message:
        resp["status"] = {"code": 200, "message": message, "status": "Success"}
    warns = [_warning(w) for w in warnings or []]
    if len(warns) > MAX_WARNINGS:
        warns = [*warns[:MAX_WARNINGS - 1], f"... and {len(warns) - MAX_WARNINGS + 1} more warnings"]
    if warns:
        resp["warnings"] = warns
    if patch:
        resp["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
        resp["patchType"] = "JSONPatch"
    if audit_annotations:
        resp["auditAnnotations"] = audit_annotations
    return {"apiVersion": api_version, "kind": KIND, "response": resp}


__all__ = ["API_VERSION", "CONTAINER_LISTS", "KIND", "MAX_WARNING", "MAX_WARNINGS", "POD_SPEC_PATHS",
           "ContainerImage", "Request", "container_images", "parse_review", "response"]
