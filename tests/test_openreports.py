"""OpenReports documents (issue 14 item 1 output), checked against the CRD's openAPIV3Schema structure.

``SCHEMA`` below restates, field by field, the structure (types, enums, required fields) of the openAPIV3Schema in
openreports/reports-api @ 769d97879794 ``config/crd/openreports.io_reports.yaml`` (ClusterReport's is identical),
generated from ``apis/openreports.io/v1alpha1/report_types.go``; the CRD file itself is not copied into the tree.
The validator checks the subset of OpenAPI v3 it uses, and is stricter than the API server in one way: an unknown
field is an error (the server would silently prune it, losing data).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from atomicsig.errors import InputError
from atomicsig.format.openreports import (
    API_VERSION,
    OUTCOMES,
    RequirementResult,
    build_report,
    outcome,
    summarize,
    to_json,
    to_yaml,
)

STR: dict[str, Any] = {"type": "string"}
RESULTS = ["pass", "fail", "warn", "error", "skip"]


def _obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _enum(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": values}


# corev1.ObjectReference and metav1.LabelSelector, as the CRD inlines them
OBJECT_REFERENCE = _obj(apiVersion=STR, fieldPath=STR, kind=STR, name=STR, namespace=STR, resourceVersion=STR,
                        uid=STR)
LABEL_SELECTOR = _obj(matchExpressions=_arr(_obj(["key", "operator"], key=STR, operator=STR, values=_arr(STR))),
                      matchLabels={"type": "object", "additionalProperties": STR})
SCHEMA: dict[str, Any] = _obj(
    apiVersion=STR,
    kind=STR,
    metadata={"type": "object"},
    source=STR,
    scope=OBJECT_REFERENCE,
    scopeSelector=LABEL_SELECTOR,
    configuration=_obj(["limits"], limits=_obj(maxResults={"type": "integer"}, statusFilter=_arr(_enum(RESULTS)))),
    summary=_obj(**{k: {"type": "integer"} for k in RESULTS}),
    results=_arr(_obj(
        ["policy"],
        category=STR,
        message=STR,
        policy=STR,
        properties={"type": "object", "additionalProperties": STR},
        resourceSelector=LABEL_SELECTOR,
        resources=_arr(OBJECT_REFERENCE),
        result=_enum(RESULTS),
        rule=STR,
        scored={"type": "boolean"},
        severity=_enum(["critical", "high", "low", "medium", "info"]),
        source=STR,
        timestamp=_obj(["nanos", "seconds"], nanos={"type": "integer", "format": "int32"},
                       seconds={"type": "integer", "format": "int64"}),
    )),
)
DIGEST = "sha256:" + "ab" * 32
FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    """OpenAPI v3 (structural CRD subset): type, properties, required, additionalProperties, items, enum, format."""
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{path}: expected object"
        props = schema.get("properties")
        for req in schema.get("required", []):
            assert req in value, f"{path}: missing required {req!r}"
        for key, sub in value.items():
            assert isinstance(key, str), f"{path}: non-string key"
            if props is not None:
                assert key in props, f"{path}: unknown field {key!r}"
                validate(sub, props[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                validate(sub, schema["additionalProperties"], f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{path}: expected array"
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]")
    elif kind == "string":
        assert isinstance(value, str), f"{path}: expected string, got {value!r}"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected integer"
        if schema.get("format") == "int32":
            assert -(2**31) <= value < 2**31, f"{path}: out of int32 range"
        if schema.get("format") == "int64":
            assert -(2**63) <= value < 2**63, f"{path}: out of int64 range"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: expected boolean"
    else:
        raise AssertionError(f"{path}: schema type {kind!r} not handled by this validator")
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"


def _results() -> list[RequirementResult]:
    return [
        RequirementResult("registry.example.com/app:1", DIGEST, "registry.example.com/app", "signedBy[0]", "pass",
                          "signed by a trusted key", signature_index=1, fingerprint=FPR,
                          identity="registry.example.com/app:1", timestamp=1767225600.25),
        RequirementResult("registry.example.com/app:2", DIGEST, "registry.example.com/app", "signedBy[0]",
                          outcome(False), "no signature found"),
        RequirementResult("registry.example.com/team/x:1", None, "registry.example.com/team", "signedBy[0]",
                          outcome(False, enforce=False), "signed by an unknown key", signature_index=2,
                          fingerprint=FPR, enforce=False),
        RequirementResult("quay.io/y:1", DIGEST, "quay.io", "sigstoreSigned[0]", outcome(None),
                          "sigstoreSigned cannot be evaluated by atomicsig: not evaluated", severity="high"),
        RequirementResult("docker.io/library/busybox:latest", DIGEST, "default", "insecureAcceptAnything", "pass"),
    ]


def test_schema_is_the_crd_structure() -> None:
    assert set(SCHEMA["properties"]) == {"apiVersion", "kind", "metadata", "source", "scope", "scopeSelector",
                                         "configuration", "summary", "results"}
    res = SCHEMA["properties"]["results"]["items"]
    assert res["required"] == ["policy"]
    assert res["properties"]["result"]["enum"] == list(OUTCOMES)
    assert set(SCHEMA["properties"]["summary"]["properties"]) == set(OUTCOMES)


def test_report_validates_against_crd_schema() -> None:
    doc = build_report(_results(), name="node-1.images", created=1767225600.0, namespace="kube-system",
                       node="node-1")
    validate(doc, SCHEMA)
    assert doc["apiVersion"] == API_VERSION and doc["kind"] == "Report"
    assert doc["summary"] == {"pass": 2, "fail": 1, "warn": 1, "error": 1, "skip": 0}
    first, _, audit, unknown, _ = doc["results"]
    assert first["policy"] == "registry.example.com/app" and first["rule"] == "signedBy[0]"
    assert first["resources"] == [{"kind": "Image", "name": "registry.example.com/app:1"}]
    assert first["properties"] == {"image": "registry.example.com/app:1", "digest": DIGEST, "signatureIndex": "1",
                                   "keyFingerprint": FPR, "identity": "registry.example.com/app:1",
                                   "reason": "signed by a trusted key"}
    assert first["timestamp"] == {"seconds": 1767225600, "nanos": 250_000_000}
    assert audit["result"] == "warn" and audit["scored"] is False and audit["properties"]["mode"] == "audit"
    assert unknown["result"] == "error" and unknown["severity"] == "high"
    cluster = build_report(_results(), name="node-1", created=0, kind="ClusterReport")
    validate(cluster, SCHEMA)
    assert "namespace" not in cluster["metadata"] and "scope" not in cluster


def test_round_trip_json_and_yaml() -> None:
    doc = build_report(_results(), name="r", created=1767225600.0, node="n")
    assert json.loads(to_json(doc)) == doc
    text = to_yaml(doc)
    back = yaml.safe_load(text)
    assert back == doc
    validate(back, SCHEMA)  # "1" stays a string (properties are map[string]string), counts stay integers
    assert back["results"][0]["properties"]["signatureIndex"] == "1"
    # U+0085 is a YAML 1.1 line break: written raw, it came back as a space (hypothesis finding)
    odd = build_report([RequirementResult("a:1", None, "a", "r", "fail", "x\x85y")], name="r", created=0)
    assert yaml.safe_load(to_yaml(odd)) == odd


@pytest.mark.parametrize("kwargs", [{"name": "Upper"}, {"name": "a_b"}, {"name": "ok", "kind": "PolicyReport"},
                                    {"name": "ok", "namespace": "Bad NS"},
                                    {"name": "ok", "kind": "ClusterReport", "namespace": "ns"}])
def test_bad_report_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        build_report([], created=0, **kwargs)


def test_bad_result_values() -> None:
    with pytest.raises(InputError):
        RequirementResult("a:1", None, "a", "r", "ok")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        RequirementResult("a:1", None, "a", "r", "pass", severity="urgent")
    with pytest.raises(InputError):
        RequirementResult("a:1", None, "", "r", "pass")


_outcomes = st.sampled_from(OUTCOMES)
_text = st.text(min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_text, _text, _outcomes, st.one_of(st.none(), st.integers(1, 128)), st.booleans(),
                          st.floats(0, 4e9, allow_nan=False)), max_size=8))
def test_any_results_give_a_valid_report(rows: list[tuple[str, str, Any, int | None, bool, float]]) -> None:
    results = [RequirementResult(img, DIGEST, scope, "signedBy[0]", res, "why: 1", signature_index=idx,
                                 enforce=enforce, timestamp=ts) for img, scope, res, idx, enforce, ts in rows]
    doc = build_report(results, name="r", created=0)
    validate(doc, SCHEMA)
    assert sum(doc["summary"].values()) == len(results) == len(doc["results"])
    assert doc["summary"] == summarize(results)
    assert yaml.safe_load(to_yaml(doc)) == doc


def test_validator_rejects_what_the_crd_rejects() -> None:
    """The schema check can fail: the mistakes an emitter could make are caught."""
    good = build_report(_results(), name="r", created=0)
    bad_docs = []
    for mutate in (
        lambda d: d["results"][0].__setitem__("result", "ok"),
        lambda d: d["results"][0].__setitem__("subjects", []),  # the Go field name, not the JSON one
        lambda d: d["results"][0]["properties"].__setitem__("signatureIndex", 1),
        lambda d: d["results"][0].pop("policy"),
        lambda d: d["results"][0].__setitem__("timestamp", "2026-01-01T00:00:00Z"),
        lambda d: d["summary"].__setitem__("pass", "2"),
    ):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        bad_docs.append(doc)
    for doc in bad_docs:
        with pytest.raises(AssertionError):
            validate(doc, SCHEMA)
