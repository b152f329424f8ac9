"""``atomicsig webhook``: a Kubernetes admission webhook checking pods' images against the policy (issue 17)."""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.handlers
import os
import queue
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from atomicsig.cli.common import gnupghome_option, registry_options
from atomicsig.errors import EXIT_OK, AtomicsigError
from atomicsig.logfmt import formatter
from atomicsig.logfmt import use as use_log_format

if TYPE_CHECKING:
    from atomicsig.net.httpd import Limits
    from atomicsig.webhook.review import NodePolicy


def load_policies(policy_file: str, gnupghome: str | None, scratch: str, *, sources: list[Path] | None = None
                  ) -> tuple[NodePolicy, dict[str, NodePolicy]]:
    """The cluster policy and one per ``namespaces:`` entry, as a fresh node would hold them once the YAML is
    applied (``CompiledPolicy.node_files``, the files ``policy render`` ships), staged under ``scratch`` and read
    back with the loader ``audit``/``explain`` use (policy/explain.load_node), so the webhook judges exactly what
    ``audit -f`` judges. Errors in the YAML are file:line, exit 2. ``sources`` gets the files it was compiled from
    (the YAML and the key files its ``keys:`` name): what the policy reload watches."""
    from atomicsig.fsutil import atomic_write, makedirs
    from atomicsig.policy.compile import compile_policy
    from atomicsig.policy.explain import load_node
    from atomicsig.webhook.review import NodePolicy

    compiled = compile_policy(policy_file, gnupghome)
    if sources is not None:
        sources[:] = [Path(policy_file), *(Path(k.value) for k in compiled.spec.keys.values()
                                           if k.kind in ("file", "cosign"))]
    root = Path(scratch)
    for node_path, data in compiled.node_files().items():
        target = root / node_path.lstrip("/")
        makedirs(target.parent)
        atomic_write(target, data, sync_dir=False)

    def view(namespace: str | None) -> NodePolicy:
        node = load_node(root, namespace=namespace)
        shown = "/" + str(Path(node.policy_path).relative_to(root))
        return NodePolicy(node.policy, node.registries_dir, (root,), node.audit_scopes,
                          f"{policy_file} ({shown})")

    return view(None), {ns: view(ns) for ns in sorted(compiled.compiled.namespaces)}


@click.command()
@click.option("-f", "--file", "policy_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="The policy YAML (the one `policy apply` puts on nodes): scopes, keys, namespaces, enforce. "
                   "Required, here or as `policy:` in --config.")
@click.option("-c", "--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Settings file (YAML; keys are the long flag names, docs/webhook.md); flags given win.")
@click.option("--policy-reload-interval", type=click.FloatRange(0, 3600), default=2.0, show_default=True,
              metavar="SECONDS", help="How often the policy YAML and the key files it names are checked for "
                                      "changes, through symlinks (a ConfigMap update is seen; 0: only on SIGHUP); "
                                      "a policy that does not load keeps the old one.")
@click.option("--listen", metavar="HOST:PORT", default="127.0.0.1:8443", show_default=True,
              help="Bind address (in a pod: 0.0.0.0:8443); port 0 picks a free port, printed once bound.")
@click.option("--tls-cert", metavar="FILE", help="PEM certificate (chain); reloaded when the file changes.")
@click.option("--tls-key", metavar="FILE", help="PEM private key; reloaded with the certificate.")
@click.option("--tls-reload-interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              metavar="SECONDS", help="How often the certificate and key files are checked for changes.")
@click.option("--audit", "audit_mode", is_flag=True,
              help="Allow every image and return a warning for each that enforcing would deny.")
@click.option("--on-error", type=click.Choice(["deny", "allow"]), default="deny", show_default=True,
              help="An image that could not be checked (registry unreachable, deadline passed): deny, or allow "
                   "with a warning. Match it with the configuration's failurePolicy (Fail / Ignore).")
@click.option("--deadline", type=click.FloatRange(0.1, 29), default=8.0, show_default=True, metavar="SECONDS",
              help="Answer every review within this; keep it below the configuration's timeoutSeconds.")
@click.option("--exempt-namespace", "exempt", multiple=True, metavar="NS",
              help="Allow every pod in NS without checking (repeatable).")
@click.option("--pin-digests", is_flag=True,
              help="POST /mutate answers with a JSONPatch rewriting each tag to the digest that was checked.")
@click.option("--cache-ttl", type=click.FloatRange(0, 3600), default=10.0, show_default=True, metavar="SECONDS",
              help="Reuse the decision for an image given by digest this long (0: never); tags are always resolved.")
@click.option("--workers", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Image checks in flight across all reviews.")
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="HTTP worker threads.")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the port, to use N cores (size it to the pod's CPU limit); each "
                   "process has its own decision cache, --workers and --threads.")
@click.option("--max-connections", type=click.IntRange(1, 65536), default=512, show_default=True,
              help="Connection cap (as `serve`).")
@click.option("--max-body", type=click.IntRange(1024, 64 * 1024 * 1024), default=3 * 1024 * 1024,
              show_default=True, help="Largest AdmissionReview body in bytes (413 above).")
@registry_options
@gnupghome_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per review: text, or JSON lines.")
@click.pass_context
def webhook(ctx: click.Context, **params: Any) -> int:
    """Serve Kubernetes AdmissionReview (admission.k8s.io/v1) until SIGTERM: every container, init container and
    ephemeral container image of Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs is
    evaluated against the policy YAML exactly as `audit` does; tags are resolved to digests at the registry.

    \b
    POST /validate   allowed, or denied (403) naming image, digest, scope and reason; audit: warnings
    POST /mutate     the same, plus a JSONPatch pinning tags to the checked digests (--pin-digests)
    GET  /healthz, /metrics
    SIGHUP, or a change to the policy's files: reload the policy (a broken one keeps the old)
    Deploy: deploy/ (docs/webhook.md).
    """
    return _serve(**(_from_config(ctx, params["config_file"]) if params["config_file"] else params))


def _serve(policy_file: str | None, config_file: str | None, policy_reload_interval: float,
           listen: str, tls_cert: str | None, tls_key: str | None, tls_reload_interval: float,
           audit_mode: bool, on_error: str, deadline: float, exempt: tuple[str, ...], pin_digests: bool,
           cache_ttl: float, workers: int, threads: int, processes: int, max_connections: int, max_body: int,
           tls_verify: bool, cert_dir: str | None, authfile: str | None, gnupghome: str | None,
           log_format: str) -> int:
    """The command, once flags and the config file are merged."""
    from atomicsig.format.validate import check_namespace
    from atomicsig.net.httpd import Limits

    if not policy_file:
        raise click.UsageError("give the policy YAML: -f FILE, or `policy:` in the --config file")
    for ns in exempt:
        check_namespace("--exempt-namespace", ns)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    server = _Server(policy_file=policy_file, gnupghome=gnupghome, listen=listen, tls_cert=tls_cert, tls_key=tls_key,
                     tls_reload_interval=tls_reload_interval, policy_reload_interval=policy_reload_interval,
                     max_body=max_body, log_format=log_format, on_error=on_error, audit_mode=audit_mode,
                     limits=Limits(threads=threads, max_connections=max_connections, max_body=max_body),
                     settings_args={"audit": audit_mode, "on_error": on_error, "deadline": deadline,
                                    "exempt_namespaces": frozenset(exempt), "pin_digests": pin_digests,
                                    "workers": workers, "cache_ttl": cache_ttl, "tls_verify": tls_verify,
                                    "cert_dir": cert_dir, "authfile": authfile})
    if processes > 1:
        return _serve_prefork(server, processes)
    with tempfile.TemporaryDirectory(prefix="atomicsig-webhook-") as scratch:
        staged = _Staging(policy_file, gnupghome, Path(scratch))
        return server.run(staged, staged.load())


class _Server:
    """One webhook server process: the whole command with ``--processes 1``, each worker's body with more."""

    def __init__(self, *, policy_file: str, gnupghome: str | None, listen: str, tls_cert: str | None,
                 tls_key: str | None, tls_reload_interval: float, policy_reload_interval: float, max_body: int,
                 log_format: str, on_error: str, audit_mode: bool, limits: Limits, settings_args: dict[str, Any]
                 ) -> None:
        self.policy_file, self.gnupghome, self.listen = policy_file, gnupghome, listen
        self.tls_cert, self.tls_key, self.tls_reload_interval = tls_cert, tls_key, tls_reload_interval
        self.policy_reload_interval, self.max_body, self.log_format = policy_reload_interval, max_body, log_format
        self.on_error, self.audit_mode, self.limits, self.settings_args = on_error, audit_mode, limits, settings_args

    def start_line(self, namespaces: int, address: str) -> str:
        mode = "audit" if self.audit_mode else "enforce"
        return (f"atomicsig webhook: {self.policy_file} ({mode}, {namespaces} namespace policies, on-error "
                f"{self.on_error}) on {'https' if self.tls_cert else 'http'}://{address}")

    def run(self, staged: _Staging, policies: tuple[NodePolicy, dict[str, NodePolicy]], *,
            sock: Any = None, metrics_dir: str | None = None, parent: int | None = None) -> int:
        """Serve until SIGTERM. ``sock``, ``metrics_dir``, ``parent``: a pre-forked worker's listening socket,
        the multiprocess metrics directory and the supervisor's pid (its start line is the supervisor's)."""
        import signal

        from atomicsig.webhook.reload import PolicyReloader
        from atomicsig.webhook.review import Reviewer, WebhookSettings
        from atomicsig.webhook.server import WebhookApp, make_server

        cluster, namespaces = policies
        reviewer = Reviewer(cluster, namespaces, WebhookSettings(**self.settings_args))
        app = WebhookApp(reviewer, max_body=self.max_body, metrics_dir=metrics_dir)
        watcher = PolicyReloader(reviewer, staged.load, self.policy_file, interval=self.policy_reload_interval,
                                 watched=lambda: staged.sources, metrics=app.metrics)
        log_writer = _setup_logging(self.log_format, pid=parent is not None)
        reloader = None
        try:
            httpd = make_server(app, self.listen, tls_cert=self.tls_cert, tls_key=self.tls_key, limits=self.limits,
                                sock=sock)
            httpd.prepare()  # bind first: a busy port is a one-line error, exit 2 (httpd.ListenError)
        except BaseException:
            reviewer.close()
            log_writer.stop()
            raise

        def _stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: watcher.request())
        if parent is not None:  # a terminal's ^C reaches the whole group: the supervisor stops the workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            from atomicsig.webhook.prefork import early_sighup

            if early_sighup():  # forwarded while this worker was still starting
                watcher.request()
        try:
            watcher.start()
            if self.tls_cert and self.tls_key:
                from atomicsig.net.httpd import TLSReloader

                reloader = TLSReloader(httpd, self.tls_cert, self.tls_key, interval=self.tls_reload_interval)
                reloader.start()
            if parent is not None:
                from atomicsig.webhook.prefork import watch_parent

                watch_parent(parent, lambda: os.kill(os.getpid(), signal.SIGTERM))
            # Everything loaded so far (modules, the policy, the verifiers) lives as long as the process: out of
            # the collector's sight, a full collection under load walks only what reviews allocate (a shorter
            # pause in the latency tail; docs/performance.md "Admission webhook").
            gc.freeze()
            if parent is None:
                click.echo(self.start_line(len(namespaces), httpd.address), err=True)
            httpd.serve()
        except KeyboardInterrupt:
            pass
        finally:
            if parent is not None:
                # A worker stopped by PR_SET_PDEATHSIG has no supervisor left to SIGKILL it if the shutdown below
                # hangs (cheroot's pool joins its threads without a bound after its own timeout): SIGALRM ends it.
                signal.alarm(30)
            if reloader is not None:
                reloader.stop()
            watcher.stop()
            httpd.stop()
            reviewer.close()
            log_writer.stop()  # every line queued is written before exit
        return EXIT_OK


def _serve_prefork(server: _Server, processes: int) -> int:
    """``--processes N``: check everything the workers will need, bind once, fork N workers, supervise them
    (webhook/prefork.py says how and why). The multiprocess metrics directory is named in the environment before
    anything here imports prometheus_client (it decides at import time)."""
    import shutil

    from atomicsig.webhook.prefork import Supervisor, check_multiprocess_metrics, metrics_dir

    with metrics_dir() as mdir, tempfile.TemporaryDirectory(prefix="atomicsig-webhook-") as scratch:
        from prometheus_client import multiprocess

        from atomicsig.net.httpd import listen_socket, parse_listen
        from atomicsig.webhook.server import check_tls

        first = _Staging(server.policy_file, server.gnupghome, Path(scratch) / "start")
        policies = first.load()  # a broken YAML: file:line, exit 2, nothing forked
        if server.tls_cert and server.tls_key:
            check_tls(server.tls_cert, server.tls_key)
        sock = listen_socket(parse_listen(server.listen), backlog=server.limits.backlog)  # busy: ListenError
        parent_log = _parent_logging(server.log_format)
        host, port = sock.getsockname()[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        parent = os.getpid()

        def work(initial: bool) -> int:
            logging.getLogger("atomicsig.webhook").removeHandler(parent_log)
            own = Path(scratch) / f"w{os.getpid()}"
            staged = _Staging(server.policy_file, server.gnupghome, own)
            loaded, staged.sources = policies, first.sources  # watch the key files the start's policy names
            if not initial:  # a replacement: the policy as it is now (the others may have reloaded since)
                try:
                    loaded = staged.load()
                except AtomicsigError as exc:
                    logging.getLogger("atomicsig.webhook").error(
                        "policy does not load in the new worker, serving the one loaded at start: %s", exc.message)
            try:
                return server.run(staged, loaded, sock=sock, metrics_dir=mdir, parent=parent)
            finally:
                shutil.rmtree(own, ignore_errors=True)

        def spawn(initial: bool) -> int:
            pid = os.fork()
            if pid:
                return pid
            code = 3  # the worker: never returns into this stack (the parent's temporary directories are not ours)
            try:
                code = work(initial) if supervisor.in_child() else 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 3
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    click.echo(f"atomicsig webhook: worker {os.getpid()} failed: "
                               f"{getattr(exc, 'message', None) or f'{type(exc).__name__}: {exc}'}", err=True)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)

        supervisor = Supervisor(processes, spawn, on_exit=lambda pid: multiprocess.mark_process_dead(pid, mdir))
        try:
            check_multiprocess_metrics()
            supervisor.start()
            click.echo(f"{server.start_line(len(policies[1]), address)}, {processes} processes", err=True)
            return supervisor.wait()
        finally:
            supervisor.stop()
            sock.close()
            logging.getLogger("atomicsig.webhook").removeHandler(parent_log)


def _parent_logging(log_format: str) -> logging.Handler:
    """The supervisor's own lines (a worker died, replaced): written directly, since the parent starts no thread
    (a log writer thread is each worker's, _setup_logging)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    if log_format == "json":
        handler.addFilter(_with_pid)
    lg = logging.getLogger("atomicsig.webhook")
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    return handler


def _with_pid(record: logging.LogRecord) -> bool:
    """JSON lines under ``--processes N`` say which process wrote them (``"pid": 1234``)."""
    fields = getattr(record, "fields", None)
    record.fields = {**(fields if isinstance(fields, dict) else {}), "pid": os.getpid()}
    return True


class _Staging:
    """Each load of the policy YAML staged in a directory of its own under the scratch directory, so reviews still
    running under the previous policy keep reading its key files; a directory is removed once it has been
    replaced for longer than any review can run (the deadline is at most 29 s)."""

    KEEP = 60.0

    def __init__(self, policy_file: str, gnupghome: str | None, scratch: Path) -> None:
        self.policy_file, self.gnupghome, self.scratch = policy_file, gnupghome, scratch
        self.count = 0
        self.replaced: list[tuple[float, Path]] = []
        self.current: Path | None = None
        self.sources: list[Path] = [Path(policy_file)]  # what the policy now served was compiled from

    def load(self) -> tuple[NodePolicy, dict[str, NodePolicy]]:
        import shutil
        import time

        self.count += 1
        target = self.scratch / f"load-{self.count}"
        try:
            sources: list[Path] = []
            loaded = load_policies(self.policy_file, self.gnupghome, str(target), sources=sources)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        now = time.monotonic()
        if self.current is not None:
            self.replaced.append((now, self.current))
        self.current, self.sources = target, sources
        while self.replaced and now - self.replaced[0][0] > self.KEEP:
            shutil.rmtree(self.replaced.pop(0)[1], ignore_errors=True)
        return loaded


def _from_config(ctx: click.Context, config_file: str) -> dict[str, Any]:
    """Every setting: from the command line if given there, else from the file, else the flag's default."""
    from click.core import ParameterSource

    from atomicsig.webhook.config import load_file

    in_file = load_file(config_file)
    out: dict[str, Any] = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        given = source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        out[name] = value if given or name not in in_file else in_file[name]
    return out


class _Deferred(logging.handlers.QueueHandler):
    """Hands the record as it is to the writer thread: its arguments (uid, kind, names, verdict) are strings, so
    formatting there is the same as here, and the request thread does neither the formatting nor the write."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _setup_logging(log_format: str, *, pid: bool = False) -> logging.handlers.QueueListener:
    """One line per review, written by one thread of its own (started here; stop() it to flush at exit).

    A StreamHandler on the request threads serialises every review on its lock while the line is formatted and
    written; under 50 concurrent reviews the threads queued on that lock, and whichever thread held it lost the
    interpreter lock mid-write, so the convoy was the largest share of a cached review's time (py-spy, bench/
    load_webhook.py: 30 % of samples waiting in Handler.acquire). A queue put does not block."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    lg = logging.getLogger("atomicsig.webhook")
    lg.addHandler(handler)
    use_log_format(log_format, "atomicsig.webhook")  # the text or JSON formatter, on the stream handler
    lg.removeHandler(handler)
    if pid and log_format == "json":
        handler.addFilter(_with_pid)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    lg.addHandler(_Deferred(records))
    lg.setLevel(logging.INFO)
    writer = logging.handlers.QueueListener(records, handler)
    writer.start()
    return writer


__all__ = ["load_policies", "webhook"]
