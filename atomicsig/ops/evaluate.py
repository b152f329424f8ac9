"""What containers/image decides for one image under a node's policy.json and registries.d (issue 14 item 1).

One evaluation, shared by ``audit`` (and the key lookup by ``policy explain``), so they cannot disagree with each
other or with ``verify``:

* the requirements are the ones c/image's ``PolicyContext`` picks for transport ``docker``: the most specific
  scope (identity, namespaces, ``*.`` wildcards, ``""``), else ``default`` (SPEC §5.4,
  :func:`atomicsig.format.policyjson.requirements_for`);
* EVERY requirement is evaluated, although c/image stops at the first that refuses, so a report names all that
  would fail; c/image ANDs them, so one failure refuses the image;
* ``insecureAcceptAnything`` passes, ``reject`` fails, ``signedBaseLayer`` fails (c/image: "not implemented",
  a refusal), ``signedBy`` with ``keyType: GPGKeys`` reads the image's signatures where a pull reads them
  (extension API, else the registries.d lookaside: :class:`atomicsig.store.select.AutoStore`) and checks each with
  :func:`atomicsig.ops.verify.verify_image` against exactly the requirement's keys (SPEC §2.1–2.4); other key
  types fail as in c/image;
* each ``signedBy`` is named after its keyring's key set (:func:`signer_name`: ``build``, ``sec1 or sec2``, as
  ``policy apply`` names the files, :mod:`atomicsig.format.keyfile_name`) and the fingerprints it trusts, and a
  failing one says "required signer X: no valid signature" (:func:`atomicsig.ops.verify.missing_signer`): with
  several signers all required (``signed-by-all``) that is which one is missing;
* ``sigstoreSigned`` is not checked here: it is reported "not evaluated" (``None``), never as a pass, and an image
  whose answer depends on it could not be decided (exit 3);
* a scope in audit mode (``enforce: false``, issue 14 #2) is accepted by the node now (policy.json:
  ``insecureAcceptAnything``); the evaluation then judges the requirements the scope *will* have, given by the
  caller from ``policy apply``'s sidecar, and says so (``mode`` "audit", ``now`` "accepted"). An entry applies only
  while policy.json still holds exactly that placeholder: a scope edited by hand since is judged as it stands.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import (
    EXIT_NEGATIVE,
    EXIT_OK,
    EXIT_UNDECIDED,
    EXIT_USAGE,
    AtomicsigError,
    NotFound,
    PolicyError,
    SignatureFormatError,
)
from atomicsig.format import identity, keyfile_name, policyjson, reference
from atomicsig.format.reference import Reference
from atomicsig.gnupg.keyring import TrustedKeys
from atomicsig.gnupg.trusted import NativeTrustedKeys, trusted_keys
from atomicsig.ops.resolve import Resolver
from atomicsig.ops.verify import ACCEPTED, ERROR, REJECTED, SignatureResult, missing_signer, verify_image
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature
from atomicsig.store.images import StoredImage

__all__ = ["Evaluation", "Evaluator", "RequirementOutcome", "audit_labels", "audited_requirements",
           "evaluate_reference", "evaluate_references", "evaluate_stored", "exit_code", "key_paths",
           "resolve_key_path", "signer_name"]

_EXIT = {ACCEPTED: EXIT_OK, REJECTED: EXIT_NEGATIVE, ERROR: EXIT_UNDECIDED}
_GPG_KEY_TYPES = ("GPGKeys",)
#: What policy.json holds for a scope in audit mode (atomicsig.policy.render writes it).
AUDIT_PLACEHOLDER = [{"type": "insecureAcceptAnything"}]


def audit_labels(audit_scopes: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """Audit-mode docker scopes keyed by the label :func:`policyjson.requirements_for` gives the winning scope."""
    return {(f"transports.docker[{scope!r}]" if scope else 'transports.docker[""]'): future
            for scope, future in audit_scopes.items()}


def audited_requirements(labels: Mapping[str, list[Any]], label: str, reqs: Any) -> list[Any] | None:
    """The requirements an audit-mode docker scope will have once enforced, or None: ``labels`` from
    :func:`audit_labels`, ``label`` the winning scope, ``reqs`` what policy.json holds for it now. None unless
    policy.json still holds exactly :data:`AUDIT_PLACEHOLDER` (a scope edited by hand since is judged as it is)."""
    return labels.get(label) if reqs == AUDIT_PLACEHOLDER else None


def key_paths(req: dict[str, Any]) -> list[str]:
    """The keyring files a ``signedBy`` requirement names (``keyPath`` or ``keyPaths``)."""
    if isinstance(req.get("keyPath"), str) and req["keyPath"]:
        return [req["keyPath"]]
    if isinstance(req.get("keyPaths"), list):
        return [p for p in req["keyPaths"] if isinstance(p, str)]
    return []


def signer_name(req: dict[str, Any]) -> str:
    """How reports name the signer a ``signedBy`` requires: the key set of an atomicsig keyring (``build``,
    ``sec1 or sec2``), else the keyring path(s) as policy.json writes them, or ``keyData``."""
    if "keyData" in req:
        return "keyData"
    labels = []
    for p in key_paths(req):
        names = keyfile_name.key_names(Path(p).name)
        labels.append(" or ".join(names) if names else p)
    return " or ".join(labels) or "(no keys)"


def resolve_key_path(root: Path, path: str) -> Path:
    """A keyPath of the node at ``root``: the file under ``root`` if it exists there, else the path as written
    (policy.json holds node paths, ``policy apply --keypaths-under-root`` writes rooted ones)."""
    under = root / path.lstrip("/")
    return under if str(root) != "/" and under.exists() else Path(path)


@dataclass
class RequirementOutcome:
    """One requirement of the winning scope for one image: ``passed`` True/False, or None (not evaluated)."""

    index: int
    type: str
    passed: bool | None
    reason: str
    signatures: list[SignatureResult] = field(default_factory=list)
    signer: str = ""  # signedBy: the key set it requires (signer_name)
    fingerprints: tuple[str, ...] = ()  # signedBy: the primary keys its keyring trusts

    @property
    def label(self) -> str:
        """``signedBy[0]``: the requirement's type and position in its list (the report's ``rule``)."""
        return f"{self.type}[{self.index}]"

    @property
    def outcome(self) -> str:
        return "not evaluated" if self.passed is None else "pass" if self.passed else "fail"

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.type, "outcome": self.outcome, "reason": self.reason,
                "signatures": [s.as_dict() for s in self.signatures],
                **({"signer": self.signer, "fingerprints": list(self.fingerprints)} if self.signer else {})}


@dataclass
class Evaluation:
    """The node's decision for one image: ``accepted`` (every requirement passed), ``rejected`` (one failed, or
    the image cannot be pulled) or ``error`` (none failed but one could not be evaluated, or reading failed)."""

    reference: str
    digest: str
    scope: str = ""
    requirements: list[RequirementOutcome] = field(default_factory=list)
    decision: str = ERROR
    reason: str = ""
    source: str = ""  # where the image came from: "argument", or the containers-storage image ID
    mode: str = "enforce"  # "audit": the scope has enforce: false; ``decision`` is then the enforced answer

    @property
    def exit_code(self) -> int:
        """From ``decision``, also in audit mode: audit answers "what would enforcing refuse?" (docs/policy.md)."""
        return _EXIT[self.decision]

    @property
    def now(self) -> str:
        """What the node decides today: an audit-mode scope accepts every image; otherwise ``decision``."""
        return ACCEPTED if self.mode == "audit" else self.decision

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest or None, "decision": self.decision,
                "mode": self.mode, "now": self.now,
                "scope": self.scope or None, "reason": self.reason, "source": self.source or None,
                "requirements": [r.as_dict() for r in self.requirements]}


class _ReadOnce(SignatureStore):
    """The signatures of one image, read once and shared by its ``signedBy`` requirements (c/image reads them per
    requirement; the answer is the same, one read is cheaper)."""

    def __init__(self, store: SignatureStore) -> None:
        self.store = store
        self.cache: dict[tuple[str, str], list[StoredSignature]] = {}

    def describe(self) -> str:
        return self.store.describe()

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        key = (str(ref), digest)
        if key not in self.cache:
            self.cache[key] = self.store.read(ref, digest)
        return self.cache[key]

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:  # pragma: no cover - read only
        raise NotImplementedError("audit never writes signatures")


class Evaluator:
    """Evaluates images under one policy document; trusted-key verifiers are built once per key set and closed by
    :meth:`close` (use as a context manager)."""

    def __init__(self, policy: dict[str, Any], store: SignatureStore, *, roots: Sequence[str | Path] = ("/",),
                 policy_source: str = "policy.json", audit_scopes: Mapping[str, list[Any]] | None = None) -> None:
        """``roots``: where the node's files are, in lookup order for keyPath (a preview root, then the node's).
        ``audit_scopes``: docker scope → the requirements it will have once enforced (policy apply's sidecar)."""
        problems = policyjson.problems(policy)
        if problems:  # c/image refuses the whole file: every pull fails, nothing to evaluate (SPEC §5.2)
            raise PolicyError(f"{policy_source}: {problems[0]}" + (f" (and {len(problems) - 1} more problems)"
                                                                    if len(problems) > 1 else ""))
        self.policy = policy
        self.store = store
        self.roots = [Path(r).absolute() for r in roots]
        self._verifiers: dict[tuple[bytes, ...], NativeTrustedKeys | TrustedKeys] = {}
        self._key_files: dict[str, tuple[Path, tuple[int, int, int, int], bytes]] = {}  # see _key_file
        self.audit_scopes = dict(audit_scopes or {})
        self._audit_labels = audit_labels(self.audit_scopes)
        self._lock = threading.Lock()  # evaluate() may run in several threads (evaluate_references)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for v in self._verifiers.values():
            v.close()
        self._verifiers.clear()

    def scope_for(self, ref: Reference) -> tuple[str, list[Any]]:
        """The winning scope's label and its requirement list for ``docker://ref``."""
        return policyjson.requirements_for(self.policy, "docker", str(ref))

    def audited(self, scope: str, reqs: list[Any]) -> list[Any] | None:
        """The enforce-mode requirements if the winning scope (label from :meth:`scope_for`) is in audit mode."""
        return audited_requirements(self._audit_labels, scope, reqs)

    def evaluate(self, ref: Reference, digest: str) -> Evaluation:
        """The decision for the image ``ref`` (the name a node pulls) whose manifest digest is ``digest``."""
        scope, reqs = self.scope_for(ref)
        ev = Evaluation(str(ref), digest, scope)
        future = self.audited(scope, reqs)
        if future is not None:
            ev.mode, reqs = "audit", future
        store = _ReadOnce(self.store)
        for i, req in enumerate(reqs):
            ev.requirements.append(self._requirement(i, req, ref, digest, store))
        failed = [r for r in ev.requirements if r.passed is False]
        unknown = [r for r in ev.requirements if r.passed is None]
        if failed:
            ev.decision = REJECTED
            ev.reason = "; ".join(f"{r.label}: {r.reason}" for r in failed)
        elif unknown:
            ev.decision = ERROR
            ev.reason = "; ".join(f"{r.label}: {r.reason}" for r in unknown)
        else:
            ev.decision, ev.reason = ACCEPTED, "every requirement passed"
        return ev

    def _requirement(self, i: int, req: dict[str, Any], ref: Reference, digest: str,
                     store: SignatureStore) -> RequirementOutcome:
        kind = str(req.get("type"))
        if kind == "insecureAcceptAnything":
            return RequirementOutcome(i, kind, True, "accepts any image")
        if kind == "reject":
            return RequirementOutcome(i, kind, False, "the scope rejects every image")
        if kind == "signedBaseLayer":
            return RequirementOutcome(i, kind, False, "signedBaseLayer is not implemented in containers/image, "
                                                      "which refuses the image")
        if kind == "signedBy":
            return self._signed_by(i, req, ref, digest, store)
        return RequirementOutcome(i, kind, None, f"not evaluated: atomicsig does not check {kind} requirements")

    def _signed_by(self, i: int, req: dict[str, Any], ref: Reference, digest: str,
                   store: SignatureStore) -> RequirementOutcome:
        kind = "signedBy"
        if req.get("keyType") not in _GPG_KEY_TYPES:
            return RequirementOutcome(i, kind, False, f"keyType {req.get('keyType')!r} is not implemented in "
                                                      "containers/image, which refuses the image")
        try:
            blobs = self._key_blobs(req)
            verifier = self._verifier(blobs)
        except SignatureFormatError as exc:  # c/image fails the requirement when its keys cannot be loaded
            return RequirementOutcome(i, kind, False, exc.message)
        except AtomicsigError as exc:
            return RequirementOutcome(i, kind, None, f"not evaluated: {exc.message}")
        matcher = identity.from_json(req["signedIdentity"]) if "signedIdentity" in req else identity.DEFAULT
        try:
            verdict = verify_image(ref, digest, store, verifier, matcher)
        except AtomicsigError as exc:  # the signatures could not be read: the answer is unknown (exit 3)
            return RequirementOutcome(i, kind, None, f"not evaluated: cannot read signatures: {exc.message}")
        name, fprs = signer_name(req), tuple(sorted(verifier.fingerprints))
        reason = verdict.reason if verdict.accepted else missing_signer(f"{name} ({', '.join(fprs)})", verdict.reason)
        return RequirementOutcome(i, kind, verdict.accepted, reason, verdict.signatures, name, fprs)

    def _key_blobs(self, req: dict[str, Any]) -> tuple[bytes, ...]:
        if "keyData" in req:
            try:
                # Go's StdEncoding (how encoding/json reads []byte) skips \r and \n, and nothing else.
                text = str(req["keyData"]).replace("\r", "").replace("\n", "")
                return (base64.b64decode(text, validate=True),)
            except (binascii.Error, ValueError) as exc:
                raise SignatureFormatError("keyData is not valid base64; containers/image refuses the image") \
                    from exc
        return tuple(self._key_file(p) for p in key_paths(req))

    def _key_file(self, p: str) -> bytes:
        """The bytes of keyPath ``p``, resolved under :attr:`roots` once and re-read only when the file changes.

        c/image reads the keyring for every signature check; so did this, with the root lookup (two ``exists``
        per root) — a fifth of an uncached webhook review's CPU. The file's identity (device, inode, size,
        mtime_ns) is compared at every use, so a key file rewritten in place or replaced (``policy apply``
        renames) is read again; only a file *appearing* under an earlier root while the resolved one still exists
        is not noticed (the webhook's staged root never changes; ``audit`` is one process per run)."""
        hit = self._key_files.get(p)
        if hit is not None:
            try:
                st = os.stat(hit[0])
            except OSError:
                pass
            else:
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == hit[1]:
                    return hit[2]
        path = next((resolve_key_path(r, p) for r in self.roots if resolve_key_path(r, p) != Path(p)), Path(p))
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except OSError as exc:
            self._key_files.pop(p, None)
            raise SignatureFormatError(f"cannot read keyPath {path}: {exc.strerror or exc}; containers/image "
                                       "refuses the image") from exc
        self._key_files[p] = (path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), data)
        return data

    def _verifier(self, blobs: tuple[bytes, ...]) -> NativeTrustedKeys | TrustedKeys:
        with self._lock:  # one verifier per key set even when two threads ask first at once
            return self._verifier_locked(blobs)

    def _verifier_locked(self, blobs: tuple[bytes, ...]) -> NativeTrustedKeys | TrustedKeys:
        if blobs not in self._verifiers:
            verifier = trusted_keys(blobs)
            if not verifier.fingerprints:
                verifier.close()
                raise SignatureFormatError("no public keys in the requirement's keyring; containers/image "
                                           "refuses the image")
            self._verifiers[blobs] = verifier
        return self._verifiers[blobs]


def evaluate_reference(text: str, *, resolver: Resolver, evaluator: Evaluator) -> list[Evaluation]:
    """The evaluations for one user reference: a tag resolves to the digest the registry serves now (a manifest
    list to the instance a node pulls), as ``verify`` resolves it. A manifest the registry does not have, or a list
    without this platform's instance, is refused (the pull fails); an unreachable registry is undecided."""
    given = reference.parse(text.strip()).with_tag_default()
    try:
        targets = resolver.resolve_pulled(text)
    except AtomicsigError as exc:
        if exc.exit_code == EXIT_USAGE:
            raise
        scope, reqs = evaluator.scope_for(given)
        # A scope that rejects every image refuses this one whatever its digest: still a decided answer.
        negative = isinstance(exc, NotFound) or exc.exit_code == EXIT_NEGATIVE or \
            any(isinstance(r, dict) and r.get("type") == "reject" for r in reqs)
        return [Evaluation(str(given), given.digest or "", scope, decision=REJECTED if negative else ERROR,
                           reason=exc.message, source="argument")]
    out = []
    for t in targets:
        ev = evaluator.evaluate(reference.parse(t.identity), t.digest)
        ev.source = "argument" + (f" ({t.note})" if t.note else "")
        out.append(ev)
    return out


def evaluate_references(texts: Sequence[str], *, resolver: Resolver, evaluator: Evaluator,
                        workers: int = 8) -> list[Evaluation]:
    """:func:`evaluate_reference` for many inputs, results in input order, up to ``workers`` at once.

    An audit of many tags is bound by registry round trips (one manifest request per tag, as a pull makes), not by
    the checks, so the requests overlap (net/fetch keeps one session per thread; verifiers are shared as in
    ``verify -j``). Every reference is parsed first, so a typo is an input error (exit 2) before any request.
    """
    for text in texts:
        reference.parse(text.strip())
    if workers <= 1 or len(texts) <= 1:
        return [ev for text in texts for ev in evaluate_reference(text, resolver=resolver, evaluator=evaluator)]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit")
    try:
        futures = [pool.submit(evaluate_reference, text, resolver=resolver, evaluator=evaluator) for text in texts]
        return [ev for fut in futures for ev in fut.result()]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on an error or Ctrl-C, drop what has not started


def evaluate_stored(image: StoredImage, evaluator: Evaluator) -> list[Evaluation]:
    """The evaluations for one image in containers-storage: one per name it carries (a pull of that name is what
    the node's policy judged), against the manifest digest of the instance the node runs (SPEC §2.2). An image
    without a name (untagged by a later pull of its tag) has nothing a policy scope could match: no evaluation."""
    source = f"containers-storage {image.id[:12]}"
    out = []
    for ref in image.references:
        if not image.manifest_digest:
            scope, reqs = evaluator.scope_for(ref)
            out.append(Evaluation(str(ref), "", scope, decision=ERROR, source=source,
                                  mode="audit" if evaluator.audited(scope, reqs) is not None else "enforce",
                                  reason="not evaluated: the store records no manifest digest for this image"))
            continue
        ev = evaluator.evaluate(ref, image.manifest_digest)
        ev.source = source
        out.append(ev)
    return out


def exit_code(evaluations: Sequence[Evaluation]) -> int:
    """3 if any image could not be decided (wins), else 1 if any would be refused, else 0."""
    codes = {e.exit_code for e in evaluations}
    return EXIT_UNDECIDED if EXIT_UNDECIDED in codes else EXIT_NEGATIVE if EXIT_NEGATIVE in codes else EXIT_OK
