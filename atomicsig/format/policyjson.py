"""policy.json as containers/image reads it (SPEC §5): strict loading, validation, serialization, scope lookup.

Pure (format layer), so every reader of a node policy — ``policy`` commands and ``ops.evaluate`` — shares it.

The document is kept as plain JSON data (dicts in file order) so that a read-modify-write keeps everything we
do not manage — other transports, other scopes, and fields this version does not know — byte-for-byte in
meaning. Validation is separate (:func:`problems`) and follows c/image's exact field sets, because one unknown
field makes c/image reject the *whole* file and every pull on the node fails (SPEC §5.2, §9).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from atomicsig.errors import PolicyError, ReferenceError_
from atomicsig.format import identity, reference
from atomicsig.format.jsonstrict import (
    DuplicateKeyError,
    duplicate_key_offset,
    line_col,
    no_duplicate_keys,
    value_offsets,
)
from atomicsig.fsutil import read_regular_nonblocking

#: c-libs image/default-policy.json (SPEC §5.1): the starting point when a node has no policy.json yet.
SHIPPED_DEFAULT: dict[str, Any] = {"default": [{"type": "insecureAcceptAnything"}],
                                   "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}

_KEY_SOURCES = ("keyPath", "keyPaths", "keyData")
_SIGSTORE_SOURCES = ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki")
_REKOR = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas")
_ONLY_EMPTY_SCOPE = ("docker-archive", "tarball")
_PATH_TRANSPORTS = ("dir", "oci", "oci-archive", "sif")


def loads(text: str | bytes, source: str) -> dict[str, Any]:
    """Parse policy.json text; duplicate keys are an error as in c/image. Raises PolicyError naming
    ``source:line:col`` (issue 14 "Bad input": a node admin must be able to go to the broken spot)."""
    try:
        doc = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except DuplicateKeyError as exc:
        shown = _as_text(text)
        at = duplicate_key_offset(shown) if shown is not None else None
        if shown is None or at is None:
            raise PolicyError(f"{source}: {exc}: not valid JSON for containers/image; refusing to touch it") from exc
        (line, col), (first, _) = line_col(shown, at[0]), line_col(shown, at[1])
        raise PolicyError(f"{source}:{line}:{col}: {exc} (first defined at line {first}): not valid JSON for "
                          "containers/image; refusing to touch it") from exc
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}; refusing to touch it") \
            from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{source} is not valid JSON ({exc}); refusing to touch it") from exc
    except RecursionError as exc:  # json recurses per nesting level (fuzz finding)
        raise PolicyError(f"{source} is nested too deeply; refusing to touch it") from exc
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: top level is not a JSON object; refusing to touch it")
    return doc


def _as_text(text: str | bytes) -> str | None:
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read(path: str | Path) -> tuple[dict[str, Any] | None, bytes | None]:
    """(parsed document, raw bytes), or (None, None) if the file does not exist.

    Opened without blocking and refused unless it is a regular file: a FIFO or device planted at the path would
    otherwise hang ``audit``/``apply`` forever (StorageError, exit 3, like any file that cannot be read)."""
    p = Path(path)
    raw = read_regular_nonblocking(p)
    if raw is None:
        return None, None
    return loads(raw, str(p)), raw


def dumps(doc: dict[str, Any]) -> bytes:
    """4-space indented JSON like ``podman image trust set`` writes, key order as in the document."""
    return (json.dumps(doc, indent=4, ensure_ascii=False) + "\n").encode()


# ---- validation (SPEC §5.2, §5.3, §5.5, §5.6) ------------------------------------------------------------------


def problems(doc: dict[str, Any]) -> list[str]:
    """Every reason c/image would refuse this document; empty means valid."""
    out: list[str] = []
    for k in doc:
        if k not in ("default", "transports"):
            out.append(f"unknown top-level key {k!r}")
    if "default" not in doc:
        out.append("Default policy is missing")
    else:
        out += _requirements(doc["default"], "default")
    transports = doc.get("transports", {})
    if not isinstance(transports, dict):
        return [*out, "transports must be an object"]
    for t, scopes in transports.items():
        if not isinstance(scopes, dict):
            out.append(f"transports.{t} must be an object")
            continue
        for scope, reqs in scopes.items():
            out += _scope_problems(t, scope)
            out += _requirements(reqs, f"transports.{t}[{scope!r}]")
    return out


_WHERE = re.compile(r"""^transports\.([^\[\s]+)\[('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\](?:\[(\d+)\])?:""")
_WHERE_DEFAULT = re.compile(r"^default(?:\[(\d+)\])?:")
_TOP_KEY = re.compile(r"^unknown top-level key (.+)$")
_SCOPE = re.compile(r"""^transport ([^\s:]+):? (?:accepts only the "" scope, not |scope )"""
                    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def problem_position(text: str | bytes, problem: str) -> tuple[int, int] | None:
    """(line, column) in policy.json ``text`` of what a :func:`problems` message is about, or None.

    containers/image names no position for a policy it refuses; a node administrator fixing one needs the line
    (issue 14 "Bad input"), so the message's own path (``transports.docker['x'][0]: …``) is looked up in the
    text."""
    shown = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    path: tuple[str | int, ...] | None = None
    if m := _WHERE.match(problem):
        path = ("transports", m.group(1), ast.literal_eval(m.group(2)))
        path += (int(m.group(3)),) if m.group(3) else ()
    elif m := _WHERE_DEFAULT.match(problem):
        path = ("default", int(m.group(1))) if m.group(1) else ("default",)
    elif m := _TOP_KEY.match(problem):
        path = (ast.literal_eval(m.group(1)),)
    elif m := _SCOPE.match(problem):
        path = ("transports", m.group(1), ast.literal_eval(m.group(2)))
    elif problem.startswith("transports."):
        path = ("transports", problem.split(".", 1)[1].split(" ", 1)[0]) if " must be" in problem else ("transports",)
    elif problem.startswith("transports must"):
        path = ("transports",)
    if path is None:
        return None
    where = value_offsets(shown).get(path)
    return line_col(shown, where[0]) if where else None


def _scope_problems(transport: str, scope: str) -> list[str]:
    if scope == "":
        return []
    if transport in _ONLY_EMPTY_SCOPE:
        return [f"transport {transport} accepts only the \"\" scope, not {scope!r}"]
    if transport in _PATH_TRANSPORTS and (not scope.startswith("/") or scope == "/" or
                                          str(Path(scope)) != scope):
        return [f"transport {transport}: scope {scope!r} must be a clean absolute path other than /"]
    if transport == "containers-storage" and not scope.startswith("[/"):
        return [f"transport containers-storage: scope {scope!r} must start with [/graph/root]"]
    return []


def _requirements(reqs: Any, where: str) -> list[str]:
    if not isinstance(reqs, list) or not reqs:
        return [f"{where}: requirement list must be a non-empty array"]
    out: list[str] = []
    for i, r in enumerate(reqs):
        out += [f"{where}[{i}]: {p}" for p in requirement_problems(r)]
    return out


def requirement_problems(req: Any) -> list[str]:
    if not isinstance(req, dict) or not isinstance(req.get("type"), str):
        return ["requirement must be an object with a string \"type\""]
    t = req["type"]
    fields: set[str]
    if t in ("insecureAcceptAnything", "reject"):
        fields = {"type"}
    elif t == "signedBy":
        fields = {"type", "keyType", *_KEY_SOURCES, "signedIdentity"}
    elif t == "sigstoreSigned":
        fields = {"type", *_SIGSTORE_SOURCES, *_REKOR, "signedIdentity"}
    elif t == "signedBaseLayer":
        fields = {"type", "baseLayerIdentity"}
    else:
        return [f"unknown requirement type {t!r}"]
    out = [f"unknown key {k!r} in {t}" for k in req if k not in fields]
    if t == "signedBy":
        if req.get("keyType") not in ("GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs"):
            out.append("signedBy: keyType must be GPGKeys")
        given = [k for k in _KEY_SOURCES if req.get(k) not in (None, "")]
        if len(given) != 1:
            out.append("signedBy: exactly one of keyPath, keyPaths, keyData must be specified")
    if t == "sigstoreSigned":
        given = [k for k in _SIGSTORE_SOURCES if k in req]
        if len(given) != 1:
            out.append("sigstoreSigned: exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, pki")
    if "signedIdentity" in req:
        try:
            identity.from_json(req["signedIdentity"])
        except PolicyError as exc:
            out.append(exc.message)
    return out


# ---- lookup (SPEC §5.4) -----------------------------------------------------------------------------------------


def requirements_for(doc: dict[str, Any], transport: str, ref: str) -> tuple[str, list[Any]]:
    """The requirement list c/image applies to ``transport:ref`` and a label of the scope that won.

    For docker the candidates are identity, namespaces, ``*.`` wildcards, then ``""``; then top-level default.
    Other transports: only the exact name (``ref``) and ``""`` are tried here.
    """
    scopes = (doc.get("transports") or {}).get(transport)
    if isinstance(scopes, dict):
        if transport in ("docker", "atomic"):
            try:
                candidates = reference.parse(ref).with_tag_default().scopes()
            except ReferenceError_:
                candidates = []
        else:
            candidates = [ref]
        for c in [*candidates, ""]:
            if c in scopes:
                return (f"transports.{transport}[{c!r}]" if c else f"transports.{transport}[\"\"]"), scopes[c]
    return "default", doc.get("default") or []
