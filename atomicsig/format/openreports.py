"""OpenReports ``Report``/``ClusterReport`` documents for ``atomicsig audit`` (issue 14 item 1, output).

Kubernetes policy tools (Kyverno, kube-bench adapters, Falco, policy-reporter) exchange results as OpenReports,
API group ``openreports.io``, version ``v1alpha1``. Field names, JSON tags and enums follow the Go types in
openreports/reports-api @ 769d97879794 ``apis/openreports.io/v1alpha1/report_types.go`` (``Report``,
``ReportSummary``, ``ReportResult``; ``clusterreport_types.go`` for the cluster-scoped kind) and the generated CRD
``config/crd/openreports.io_reports.yaml``:

* top level: ``apiVersion``, ``kind``, ``metadata``, ``source``, optional ``scope`` (a ``corev1.ObjectReference``,
  here the Node), ``summary``, ``results``;
* ``summary``: integer counts ``pass``, ``fail``, ``warn``, ``error``, ``skip``;
* each result: ``source``, ``policy`` (required), ``rule``, ``result`` (enum pass/fail/warn/error/skip),
  ``scored``, ``timestamp`` (``metav1.Timestamp``: ``{seconds, nanos}``), ``resources`` (the Go field is
  ``Subjects`` but its JSON name is ``resources``: ObjectReferences), ``message`` (Go ``Description``) and
  ``properties`` (string → string only), plus optional ``category`` and ``severity``
  (critical/high/low/medium/info).

How atomicsig fills it (the mapping issue 14 asks for): ``policy`` = the policy.json scope that decided,
``rule`` = the requirement (``signedBy[0]``, ``reject``, …), ``resources`` = the image (kind ``Image``, name =
the reference as audited), ``properties`` = image, digest, signature index, key fingerprint, claimed identity,
reason; ``message`` = the reason. A scope in audit mode (``enforce: false``) is not scored and its failures are
``warn`` — exactly the enum's meaning ("requirements not met and the policy is not scored"). A requirement that
could not be evaluated is ``error``, never ``pass``.

Pure: builds dicts and text; the caller writes them (atomically) where it wants.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from atomicsig.errors import InputError

API_VERSION = "openreports.io/v1alpha1"
KINDS = ("Report", "ClusterReport")
SOURCE = "atomicsig"
Outcome = Literal["pass", "fail", "warn", "error", "skip"]
#: ``Result`` enum, in the CRD's order (also the summary's keys).
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "warn", "error", "skip")
SEVERITIES = ("critical", "high", "low", "medium", "info")
#: metadata.name / namespace: a DNS-1123 subdomain (names) and label (namespaces), as the API server requires.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def outcome(decided: bool | None, *, enforce: bool = True) -> Outcome:
    """The ``result`` for a requirement: True → pass; False → fail, or warn in audit mode; None (could not be
    evaluated) → error."""
    if decided is None:
        return "error"
    if decided:
        return "pass"
    return "fail" if enforce else "warn"


@dataclass(frozen=True)
class RequirementResult:
    """One image × one requirement, as ``audit`` computes it.

    ``signature_index`` is the lookaside ``signature-N`` number (1-based) of the signature the outcome rests on,
    ``fingerprint`` the signing key, ``identity`` the docker-reference that signature claims. ``enforce`` False
    marks an audit-mode scope (result not scored).
    """

    image: str
    digest: str | None
    scope: str
    requirement: str
    result: Outcome
    reason: str = ""
    signature_index: int | None = None
    fingerprint: str | None = None
    identity: str | None = None
    enforce: bool = True
    timestamp: float | None = None
    category: str | None = None
    severity: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.result not in OUTCOMES:
            raise InputError(f"result must be one of {', '.join(OUTCOMES)}, not {self.result!r}")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise InputError(f"severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")
        if not self.scope:
            raise InputError("a result needs the policy scope that decided it")

    def properties(self) -> dict[str, str]:
        """``properties`` is ``map[string]string`` in the CRD: every value a string, absent ones left out."""
        props: dict[str, str] = {"image": self.image}
        if self.digest:
            props["digest"] = self.digest
        if self.signature_index is not None:
            props["signatureIndex"] = str(self.signature_index)
        if self.fingerprint:
            props["keyFingerprint"] = self.fingerprint
        if self.identity:
            props["identity"] = self.identity
        if self.reason:
            props["reason"] = self.reason
        if not self.enforce:
            props["mode"] = "audit"
        for key, value in self.extra.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InputError("report properties must map strings to strings")
            props.setdefault(key, value)
        return props

    def to_dict(self, default_time: float) -> dict[str, Any]:
        when = self.timestamp if self.timestamp is not None else default_time
        seconds = int(when // 1)
        out: dict[str, Any] = {
            "source": SOURCE,
            "policy": self.scope,
            "rule": self.requirement,
            "result": self.result,
            "scored": self.enforce,
            "timestamp": {"seconds": seconds, "nanos": min(round((when - seconds) * 1e9), 999_999_999)},
            "resources": [{"kind": "Image", "name": self.image}],
            "properties": self.properties(),
        }
        if self.reason:
            out["message"] = self.reason
        if self.category:
            out["category"] = self.category
        if self.severity:
            out["severity"] = self.severity
        return out


def summarize(results: Iterable[RequirementResult]) -> dict[str, int]:
    """``ReportSummary``: how many results have each outcome (every key present, zeros included)."""
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for res in results:
        counts[res.result] += 1
    return counts


def build_report(results: Sequence[RequirementResult], *, name: str, created: float, kind: str = "Report",
                 namespace: str | None = None, node: str | None = None,
                 labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Report (or ClusterReport) document for ``results``; ``created`` (Unix seconds) stamps results without
    their own time. ``node`` becomes ``scope`` (``{apiVersion: v1, kind: Node, name}``), as a node audit's report
    is about that node."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        raise InputError(f"report name {name!r} is not a valid Kubernetes name (lowercase DNS-1123 subdomain)")
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        if kind == "ClusterReport":
            raise InputError("a ClusterReport has no namespace")
        if not _DNS1123_LABEL.match(namespace) or len(namespace) > 63:
            raise InputError(f"namespace {namespace!r} is not a valid Kubernetes namespace name")
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": SOURCE, **(labels or {})}
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "source": SOURCE}
    if node:
        doc["scope"] = {"apiVersion": "v1", "kind": "Node", "name": node}
    doc["summary"] = summarize(results)
    doc["results"] = [r.to_dict(created) for r in results]
    return doc


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def to_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML in field order. ``safe_dump`` quotes strings that would read back as numbers; non-ASCII is
    escaped because PyYAML writes U+0085 raw, which a YAML 1.1 reader takes as a line break (hypothesis finding)."""
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, allow_unicode=False)
