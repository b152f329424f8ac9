"""``atomicsig policy``: validate, apply, show, explain and render node trust policy (docs/policy.md)."""

from __future__ import annotations

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
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_USAGE

_FILE = click.option("-f", "--file", "policy_file", required=True, metavar="FILE", type=click.Path(dir_okay=False),
                     help="Policy YAML (see docs/policy.md).")
_ROOT = click.option("--root", default="/", show_default=True, metavar="DIR",
                     help="Treat DIR as the node's / (read and write <DIR>/etc/containers/…).")
_REGKEYS = click.option("--registries-keys", type=click.Choice(["lookaside", "sigstore", "both"]),
                        default="lookaside", show_default=True,
                        help="registries.d key names: sigstore/both also serve nodes older than c/image 5.22.")


@click.group()
def policy() -> None:
    """Compile a declarative YAML into policy.json, registries.d files and keyrings, and inspect nodes.

    \b
    Exit codes: validate 0 ok / 2 invalid; apply 0 applied or unchanged, 1 changes pending (--dry-run, --check),
    2 input error, 3 write error.
    """


@policy.command()
@_FILE
@_ROOT
@gnupghome_option
@json_option
def validate(policy_file: str, root: str, gnupghome: str | None, as_json: bool) -> int:
    """Check the YAML, its keys, and conflicts with the registries.d files under --root; print warnings."""
    from atomicsig.policy.compile import compile_policy

    policy = compile_policy(policy_file, gnupghome)
    plan = policy.plan(root)  # raises on conflicts exactly as apply would
    warnings = [*plan.warnings, *policy.lint(root)]
    spec, keys = policy.spec, policy.keys
    if as_json:
        emit_json({"valid": True, "warnings": warnings, "scopes": len(spec.scopes), "namespaces": len(spec.namespaces),
                   "keys": {k.name: list(k.fingerprints) for k in keys.values()}, "pending": plan.pending})
        return EXIT_OK
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    for k in keys.values():
        click.echo(f"key {k.name}: {', '.join(k.fingerprints) or k.kind}")
    click.echo(f"{policy_file}: valid ({len(spec.scopes)} scopes, {len(keys)} keys, {len(warnings)} warnings)")
    return EXIT_OK


@policy.command(name="apply")
@_FILE
@_ROOT
@_REGKEYS
@click.option("--dry-run", is_flag=True, help="Print a unified diff of what would change; change nothing. "
                                               "Exit 1 if changes are pending, 0 if none.")
@click.option("--check", is_flag=True, help="Like --dry-run but print only the list of files.")
@click.option("--audit", is_flag=True,
              help="With --dry-run/--check: also audit the images in the node's containers-storage against the "
                   "result (as `atomicsig audit -f FILE --storage`); the exit code is then the audit's: 0 all "
                   "accepted, 1 some would be refused, 3 some could not be checked.")
@click.option("--storage-root", metavar="DIR", help="containers-storage graphroot for --audit.")
@click.option("--keypaths-under-root", is_flag=True,
              help="Write keyPath values that include --root (to run skopeo/podman against the tree in place, "
                   "e.g. in tests) instead of the node path /etc/pki/containers/….")
@signature_policy_dir_option
@registry_options
@gnupghome_option
@json_option
def apply_cmd(policy_file: str, root: str, registries_keys: str, dry_run: bool, check: bool, audit: bool,
              storage_root: str | None, keypaths_under_root: bool, policy_dir: str, tls_verify: bool,
              cert_dir: str | None, authfile: str | None, gnupghome: str | None, as_json: bool) -> int:
    """Install the policy: new keyrings, then registries.d/atomicsig.yaml and policy.json (staged, then renamed
    back to back: the policy.json rename is the commit point), then removals, then the state record.

    Only scopes and files recorded in <root>/var/lib/atomicsig/policy-state.json are ever replaced or removed;
    replaced files are kept as <file>.atomicsig-bak.<UTC timestamp>.
    """
    from atomicsig.policy import apply
    from atomicsig.policy.compile import compile_policy

    policy = compile_policy(policy_file, gnupghome, registries_keys=registries_keys)
    plan = policy.plan(root, keypaths_under_root=keypaths_under_root, policy_dir=policy_dir)
    for w in [*plan.warnings, *policy.lint(root)]:
        click.echo(f"warning: {w}", err=True)
    for s in plan.adopted:
        click.echo(f"note: taking over existing policy.json scope {s!r}", err=True)
    changes = _with_files(plan.summary(), root)
    if (audit or storage_root) and not (dry_run or check):
        raise click.UsageError("--audit and --storage-root go with --dry-run or --check")
    if storage_root and not audit:
        raise click.UsageError("--storage-root needs --audit")
    if audit:
        from atomicsig.cli.audit import evaluate_node, print_table
        from atomicsig.ops.evaluate import exit_code

        _, audited = evaluate_node(root, policy, [], storage=True, storage_root=storage_root,
                                   tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                   policy_dir=policy_dir)
    if dry_run or check:
        if as_json:
            emit_json({"pending": plan.pending, "changes": changes,
                       **({"audit": [a.as_dict() for a in audited]} if audit else {})})
        elif dry_run:
            click.echo(plan.diff(), nl=False)
        else:
            for c in changes:
                click.echo(f"{c['action']:7} {c['file']}")
        if not as_json:
            click.echo("changes pending" if plan.pending else "unchanged", err=True)
            if audit:
                print_table(audited)
        if audit:
            return exit_code(audited)
        return EXIT_NEGATIVE if plan.pending else EXIT_OK
    backups = apply.execute(plan) if plan.pending else []
    if as_json:
        emit_json({"changed": plan.pending, "changes": changes, "backups": [str(b) for b in backups]})
        return EXIT_OK
    for c in changes:
        click.echo(f"{c['action']:7} {c['file']}")
    click.echo(f"changed ({len(plan.summary())} files)" if plan.pending else "unchanged")
    return EXIT_OK


def _with_files(changes: list[dict[str, str]], root: str) -> list[dict[str, str]]:
    """Each change with ``file``, the path actually written (under --root); ``path`` stays the node's path.

    With ``--root X`` the files land in X/etc/…; printing the bare /etc/… path sent users to the wrong file.
    """
    import os

    return [{**c, "file": os.path.join(root, c["path"].lstrip("/"))} for c in changes]


@policy.command()
@_ROOT
@click.option("--policy", "policy_path", metavar="FILE", help="policy.json to read (default: the one the node's "
                                                               "containers/image reads, see --lookup).")
@click.option("--registries.d", "registries_dir", metavar="DIR", help="registries.d directory (default: the ones "
                                                                       "the node's containers/image reads).")
@click.option("--noheading", is_flag=True, help="Omit the table heading.")
@node_lookup_options
@json_option
def show(root: str, policy_path: str | None, registries_dir: str | None, noheading: bool, as_user: str | None,
         lookup: str, as_json: bool) -> int:
    """Print the node's trust policy as TRANSPORT NAME TYPE ID STORE (like podman image trust show).

    Which policy.json and registries.d files won (and any that a higher-priority file hides) goes to stderr;
    --json prints {"lookup", "warnings", "rows"}.
    """
    from atomicsig.policy import explain

    node = explain.load_node(root, policy_path, registries_dir, user=as_user, lookup=lookup)
    rows = explain.show(node)
    if as_json:
        emit_json({**explain.lookup_info(node), "rows": rows})
        return EXIT_OK
    from atomicsig.cli.audit import print_lookup

    print_lookup(node)
    cells = [[r["transport"], r["name"], str(r["type"]), r["id"], r["store"]] for r in rows]
    text = table(cells, ["TRANSPORT", "NAME", "TYPE", "ID", "STORE"])
    click.echo(text.split("\n", 1)[1] if noheading and "\n" in text else "" if noheading else text)
    return EXIT_OK


@policy.command(name="explain")
@click.argument("ref")
@_ROOT
@click.option("--policy", "policy_path", metavar="FILE", help="policy.json to read.")
@click.option("--registries.d", "registries_dir", metavar="DIR", help="registries.d directory.")
@namespace_option
@signature_policy_dir_option
@node_lookup_options
@click.option("--check", is_flag=True,
              help="Also read REF's signatures and evaluate every requirement as `atomicsig audit` does, naming a "
                   "required signer without a valid signature. Exit 0 accepted, 1 refused, 3 could not check.")
@registry_options
@json_option
def explain_cmd(ref: str, root: str, policy_path: str | None, registries_dir: str | None, namespace: str | None,
                policy_dir: str, as_user: str | None, lookup: str, check: bool, tls_verify: bool,
                cert_dir: str | None, authfile: str | None, as_json: bool) -> int:
    """Which scope of the node's policy applies to REF, its requirements (each signedBy as the signer it
    requires), the lookaside a pull reads: the configured base, its registries.d file, and the exact URL of
    signature-1 (with REF@sha256:…), and which policy.json and registries.d files the node's containers/image
    reads (warnings on stderr). With --check, whether a pull of REF would be accepted. With --namespace, the
    policy CRI-O uses for a pod in that namespace (its own file, else the global one).

    Exit 2 if the lookaside URL is one containers/image refuses (every pull of REF would fail).
    """
    from atomicsig.policy import explain

    node = explain.load_node(root, policy_path, registries_dir, user=as_user, lookup=lookup, namespace=namespace,
                             policy_dir=policy_dir)
    info = explain.explain(node, ref)
    evaluations = explain.check(node, ref, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile) \
        if check else None
    if as_json:
        emit_json({**info, **({"evaluations": [e.as_dict() for e in evaluations]} if evaluations is not None
                              else {})})
    else:
        click.echo(explain.explain_text(info))
        for w in info.get("warnings", []):
            click.echo(f"warning: {w}", err=True)
        if evaluations is not None:
            click.echo(explain.check_text(evaluations))
    if info.get("lookaside_error"):
        click.echo(f"error: {info['lookaside_error']}", err=True)
        return EXIT_USAGE
    if evaluations is not None:
        from atomicsig.ops.evaluate import exit_code

        return exit_code(evaluations)
    return EXIT_OK


@policy.command()
@_FILE
@_REGKEYS
@click.option("--format", "fmt", type=click.Choice(["machineconfig", "butane", "json"]), default="machineconfig",
              show_default=True, help="machineconfig/butane: every file; json: only policy.json.")
@click.option("--name", default="51-atomicsig-policy", show_default=True, help="MachineConfig name.")
@click.option("--role", default="worker", show_default=True, help="machineconfiguration.openshift.io/role label.")
@signature_policy_dir_option
@gnupghome_option
def render(policy_file: str, registries_keys: str, fmt: str, name: str, role: str, policy_dir: str,
           gnupghome: str | None) -> int:
    """Print the node files for a fresh node (policy.json from the shipped default) as a MachineConfig or Butane.

    Every file gets mode 0644 (420) and a data: URL; the MachineConfig replaces the node's policy.json, so
    scopes not in the YAML (except the shipped docker-daemon entry) are not kept. Each `namespaces:` entry adds
    <signature-policy-dir>/<namespace>.json (that policy.json plus the namespace's scopes).
    """
    from atomicsig.policy import render as r
    from atomicsig.policy.compile import compile_policy

    files = compile_policy(policy_file, gnupghome, registries_keys=registries_keys).node_files(policy_dir)
    if fmt == "json":
        click.echo(files[r.POLICY_PATH].decode(), nl=False)
        return EXIT_OK
    emit = r.machineconfig if fmt == "machineconfig" else r.butane
    click.echo(emit(files, name=name, role=role), nl=False)
    return EXIT_OK
