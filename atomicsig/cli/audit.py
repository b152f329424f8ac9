"""``atomicsig audit``: which images would this node's policy (or a policy not applied yet) refuse? (issue 14 #1)"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from atomicsig.cli.common import (
    emit_json,
    gnupghome_option,
    json_option,
    namespace_option,
    node_lookup_options,
    registry_options,
    signature_policy_dir_option,
    table,
)
from atomicsig.ops.resolve import read_reference_list

if TYPE_CHECKING:
    from atomicsig.ops.evaluate import Evaluation
    from atomicsig.policy.compile import CompiledPolicy
    from atomicsig.policy.explain import NodeConfig
    from atomicsig.store.images import StoredImage


@click.command()
@click.argument("references", nargs=-1)
@click.option("--root", default="/", show_default=True, metavar="DIR",
              help="The node's / : policy.json and registries.d are found under DIR as the node's "
                   "containers/image finds them (see --lookup, --user).")
@click.option("-f", "--file", "policy_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Audit against this policy YAML as `policy apply` would leave the node (nothing is applied).")
@click.option("--from-file", "from_file", metavar="FILE",
              help="Also read references from FILE, one per line, # comments ('-': stdin).")
@click.option("--storage", is_flag=True,
              help="Audit every named image in the node's containers-storage (read only; root's, or this user's).")
@click.option("--storage-root", metavar="DIR", help="containers-storage graphroot to read (with --storage).")
@click.option("--report", "report_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write an OpenReports Report to FILE (JSON if it ends in .json, else YAML).")
@click.option("--metrics", "metrics_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write Prometheus text-format metrics to FILE (atomically: for node_exporter's textfile "
                   "collector, name it *.prom).")
@namespace_option
@signature_policy_dir_option
@node_lookup_options
@registry_options
@gnupghome_option
@json_option
def audit(references: tuple[str, ...], root: str, policy_file: str | None, from_file: str | None, storage: bool,
          storage_root: str | None, report_file: str | None, metrics_file: str | None, namespace: str | None,
          policy_dir: str, as_user: str | None, lookup: str, tls_verify: bool, cert_dir: str | None,
          authfile: str | None, gnupghome: str | None, as_json: bool) -> int:
    """Evaluate images exactly as containers/image would under the node's policy, and report, per image, the
    decision, the scope that decided, each requirement's outcome and the signatures found. Nothing is enforced.

    \b
    Images: REFERENCES, --from-file, and/or --storage. Tags resolve to the digest the registry serves now.
    --namespace NS: as CRI-O decides for a pod in NS (its <signature-policy-dir>/NS.json, else the global policy;
    CRI-O checks that file again when a container is created, so it also applies to stored images).
    A requirement atomicsig cannot check (sigstoreSigned) is "not evaluated", never a pass.
    A scope in audit mode (enforce: false) is accepted by the node now; it is judged against the
    requirements it will have once enforced (MODE audit; report result "warn" instead of "fail").

    Exit 0 every image accepted, 1 some would be refused (audit-mode scopes: once enforced), 3 some could not be
    checked (3 wins over 1), 2 bad input: a broken policy.json (file:line:col), registries.d file, policy YAML or
    storage.conf, a --report or --metrics directory that does not exist; 3 also when a file exists but cannot be
    read (permissions): the answer is unknown. On any error nothing is written (no --report, no --metrics).

    \b
    Which policy.json and registries.d: the ones the node's containers/image reads (--lookup, --user), named on
    stderr (and under "lookup" in --json) with a warning for each file a higher-priority one hides.
    """
    from atomicsig.ops import evaluate as e

    started = time.time()
    refs = list(references) + (read_reference_list(from_file) if from_file else [])
    if not refs and not storage:
        raise click.UsageError("give image references, --from-file or --storage")
    if storage_root and not storage:
        raise click.UsageError("--storage-root needs --storage")
    for destination in (report_file, metrics_file):
        if destination:
            _check_report_destination(destination)
    compiled = None
    if policy_file:
        from atomicsig.policy.compile import compile_policy

        compiled = compile_policy(policy_file, gnupghome)
    notes: list[str] = []
    seen: list[NodeConfig] = []
    source, results = evaluate_node(root, compiled, refs, storage=storage, storage_root=storage_root,
                                    tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile, user=as_user,
                                    lookup=lookup, on_node=seen.append, namespace=namespace,
                                    policy_dir=policy_dir, notes=notes)
    if report_file:
        _write_report(report_file, results)
    if metrics_file:
        write_metrics(metrics_file, results, started=started, finished=time.time(), exit_code=e.exit_code(results))
    for note in notes if not as_json else []:
        click.echo(f"atomicsig: note: {note}", err=True)
    if as_json:
        from atomicsig.policy.explain import lookup_info

        emit_json({"policy": policy_file or source, **lookup_info(seen[0]),
                   "images": [r.as_dict() for r in results],
                   **({"namespace": namespace, "namespace_policy": source, "namespace_note": notes[0]}
                      if namespace is not None else {})})
    else:
        print_lookup(seen[0])
        print_table(results)
    return e.exit_code(results)


def evaluate_node(root: str, compiled: CompiledPolicy | None, refs: list[str], *, storage: bool,
                  storage_root: str | None, tls_verify: bool, cert_dir: str | None,
                  authfile: str | None, user: str | None = None, lookup: str = "auto",
                  on_node: Callable[[NodeConfig], None] | None = None, namespace: str | None = None,
                  policy_dir: str = "/etc/crio/policies",
                  notes: list[str] | None = None) -> tuple[str, list[Evaluation]]:
    """(policy.json judged, one evaluation per image): the node's files under ``root``, or with ``compiled`` the
    files applying it would leave (staged in a scratch directory). Shared by ``audit`` and ``policy apply
    --dry-run --audit``, so the two cannot answer differently. The files are found as the node's containers/image
    finds them for ``user`` (:mod:`atomicsig.store.nodefiles`); ``on_node`` sees what was found. With
    ``namespace``, the file CRI-O reads for a pod there (explain.load_node), and which one that is goes into
    ``notes``."""
    from atomicsig.ops import evaluate as e
    from atomicsig.ops.resolve import Resolver
    from atomicsig.policy.explain import load_node
    from atomicsig.store.select import AutoStore

    stored: list[StoredImage] = []
    if storage:
        stored = _stored_images(root, user, lookup, storage_root)
        nameless = sum(1 for image in stored if not image.references)
        if nameless:
            click.echo(f"atomicsig: note: {nameless} stored image(s) without a name were not audited (no policy "
                       "scope can match them)", err=True)
    results: list[Evaluation] = []
    with tempfile.TemporaryDirectory(prefix="atomicsig-audit-") as scratch:
        roots = [root]
        overlay = None
        if compiled is not None:
            from atomicsig.policy.preview import stage_applied

            stage_applied(compiled, root, scratch, policy_dir=policy_dir)
            roots, overlay = [scratch, root], scratch
        node = load_node(root, user=user, lookup=lookup, overlay=overlay, namespace=namespace,
                         policy_dir=policy_dir)
        problem = node.files.policy_problem() if node.files else None
        if problem:  # c/image refuses the file: nothing to evaluate; say where (issue 14 "Bad input")
            from atomicsig.errors import PolicyError

            raise PolicyError(problem)
        if on_node is not None:
            on_node(node)
        # A staged file is named where the apply will put it, not by the scratch path that is gone afterwards.
        shown = str(node.policy_path) if overlay is None or not node.policy_path.is_relative_to(scratch) else \
            str(Path(root) / Path(node.policy_path).relative_to(scratch))
        if node.namespace_note and notes is not None:
            notes.append(node.namespace_note.replace(str(node.policy_path), shown))
        store = AutoStore(registries_dir=str(node.registries_dir), tls_verify=tls_verify, cert_dir=cert_dir,
                          authfile=authfile, config=node.registries)
        resolver = Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile)
        with e.Evaluator(node.policy, store, roots=roots, policy_source=str(node.policy_path),
                         audit_scopes=node.audit_scopes) as evaluator:
            results += e.evaluate_references(refs, resolver=resolver, evaluator=evaluator)
            for image in stored:
                results += e.evaluate_stored(image, evaluator)
    return shown, results


def _stored_images(root: str, user: str | None, lookup: str, storage_root: str | None) -> list[StoredImage]:
    """The node's containers-storage images for the same user and generation as the policy lookup: a --user's
    store is found from their home and uid (under --root when auditing a mounted node)."""
    import os

    from atomicsig.format.containers_paths import Generation
    from atomicsig.store import nodefiles
    from atomicsig.store.images import node_images

    gen: Generation = "new" if (lookup if lookup != "auto" else nodefiles.installed_generation(root).name) == "new" \
        else "old"
    rooted = None if root == "/" else root
    if user is None:
        return node_images(root=rooted, generation=gen, graphroot=storage_root)[1]
    who = nodefiles.viewer(root, user).env
    home = who.home if rooted is None else os.path.join(root, who.home.lstrip("/"))
    return node_images({"HOME": home}, uid=who.uid, passwd_home=home, root=rooted, generation=gen,
                       graphroot=storage_root)[1]


def _check_report_destination(path: str) -> None:
    """Refuse a --report path that cannot be written before any work is done (exit 2), so a run never ends with
    the answer computed and no report, and never leaves a partial file (the write itself is temp + rename)."""
    import os

    from atomicsig.errors import InputError

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"--report {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise InputError(f"--report {path}: is a directory")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--report {path}: directory {parent} is not writable")


def print_lookup(node: NodeConfig) -> None:
    """Which policy.json and registries.d files won (stderr, so the table on stdout stays parseable), then a
    ``warning:`` line for each file or scope that a higher-priority one hides (issue 14 item 4)."""
    from atomicsig.policy.explain import lookup_text

    for line in lookup_text(node):
        click.echo(line, err=True)
    for w in node.files.warnings if node.files else []:
        click.echo(f"warning: {w}", err=True)


def print_table(results: list[Evaluation]) -> None:
    """IMAGE DECISION SCOPE REQUIREMENTS REASON; with a MODE column (``audit (accepted now)`` / ``enforce``) after
    DECISION only when some image is under an audit-mode scope, so enforce-only output keeps its shape."""
    audit_mode = any(r.mode == "audit" for r in results)
    rows = []
    for r in results:
        reqs = ", ".join(f"{q.label}={q.outcome}" for q in r.requirements) or "-"
        mode = [f"audit ({r.now} now)" if r.mode == "audit" else r.mode] if audit_mode else []
        rows.append([r.reference, r.decision.upper(), *mode, r.scope or "-", reqs,
                     "" if r.decision == "accepted" else r.reason])
    click.echo(table(rows, ["IMAGE", "DECISION", *(["MODE"] if audit_mode else []), "SCOPE", "REQUIREMENTS",
                            "REASON"]))


def _write_report(path: str, results: list[Evaluation]) -> None:
    """One OpenReports result per image × requirement (an image that could not be resolved: one result)."""
    from atomicsig.format import openreports as o
    from atomicsig.fsutil import atomic_write

    now = time.time()
    items: list[o.RequirementResult] = []
    for r in results:
        enforce = r.mode != "audit"  # an audit-mode failure is "warn", not scored (openreports.py)
        if not r.requirements:
            items.append(o.RequirementResult(
                image=r.reference, digest=r.digest or None, scope=r.scope or "default", requirement="pull",
                result=o.outcome(False if r.decision == "rejected" else None, enforce=enforce), reason=r.reason,
                timestamp=now, enforce=enforce))
        for q in r.requirements:
            sig = next((s for s in q.signatures if s.accepted), q.signatures[0] if q.signatures else None)
            items.append(o.RequirementResult(
                image=r.reference, digest=r.digest or None, scope=r.scope, requirement=q.label,
                result=o.outcome(q.passed, enforce=enforce), reason=q.reason, timestamp=now,
                signature_index=sig.index if sig else None, fingerprint=sig.signer if sig else None,
                identity=sig.identity if sig else None, enforce=enforce))
    node = platform.node().lower()
    doc = o.build_report(items, name="atomicsig-audit", created=now, node=node or None)
    text = o.to_json(doc) if path.endswith(".json") else o.to_yaml(doc)
    atomic_write(Path(path), text.encode())


#: Per-scope image counts by outcome (``atomicsig_audit_images``'s ``result`` label).
METRIC_RESULTS = {"accepted": "pass", "rejected": "fail", "error": "not_evaluated"}


def write_metrics(path: str, results: list[Evaluation], *, started: float, finished: float, exit_code: int) -> None:
    """Prometheus text exposition for node_exporter's textfile collector, replaced atomically (temp + fsync +
    rename, fsutil) so the collector never reads half a file (``prometheus_client.write_to_textfile`` renames
    without fsync). Metrics (docs/policy.md "Audit timer"):

    * ``atomicsig_audit_images{scope, mode, result}``: images per winning scope; ``mode`` enforce|audit,
      ``result`` pass|fail|not_evaluated — for an audit-mode scope, what enforcing it would do. Every result of a
      scope seen is written, zeros included, so an alert on ``result="fail"`` sees the drop back to 0.
    * ``atomicsig_audit_last_run_timestamp_seconds``, ``atomicsig_audit_duration_seconds``,
      ``atomicsig_audit_exit_code`` (0/1/3, the command's exit code).
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from atomicsig.fsutil import atomic_write

    registry = CollectorRegistry()
    images = Gauge("atomicsig_audit_images", "Images audited, by winning policy scope, scope mode and result "
                   "(audit mode: the result once enforced)", ["scope", "mode", "result"], registry=registry)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in results:
        per = counts.setdefault((r.scope or "default", r.mode), dict.fromkeys(METRIC_RESULTS.values(), 0))
        per[METRIC_RESULTS[r.decision]] += 1
    for (scope, mode), per in sorted(counts.items()):
        for result, n in per.items():
            images.labels(scope=scope, mode=mode, result=result).set(n)
    Gauge("atomicsig_audit_last_run_timestamp_seconds", "When the audit finished (Unix time)",
          registry=registry).set(finished)
    Gauge("atomicsig_audit_duration_seconds", "How long the audit took", registry=registry).set(finished - started)
    Gauge("atomicsig_audit_exit_code", "The audit's exit code: 0 all accepted, 1 some refused (audit mode: once "
          "enforced), 3 some not checked", registry=registry).set(exit_code)
    atomic_write(Path(path), generate_latest(registry))
