"""``atomicsig serve``: serve a sigstore directory (lookaside GETs, extension API, sync journal)."""

from __future__ import annotations

import logging
import sys

import click

from atomicsig.cli.common import DEFAULT_SIGSTORE
from atomicsig.errors import EXIT_OK, InputError
from atomicsig.logfmt import use as use_log_format


@click.command()
@click.option("-c", "--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="YAML config file (docs/serve.md); command-line flags override it.")
@click.option("--sigstore", metavar="DIR", default=None,
              help=f"Sigstore directory to serve [default: {DEFAULT_SIGSTORE}].")
@click.option("--listen", metavar="HOST:PORT", default=None,
              help="Bind address; port 0 picks a free port, printed once bound [default: 127.0.0.1:8080].")
@click.option("--tls-cert", metavar="FILE", default=None, help="PEM certificate (chain) for HTTPS.")
@click.option("--tls-key", metavar="FILE", default=None, help="PEM private key for HTTPS.")
@click.option("--token-file", metavar="FILE", default=None,
              help="File holding the bearer token required for PUT. Without it, PUT is disabled.")
@click.option("--read-token-file", metavar="FILE", default=None,
              help="Also require a bearer token (this one, or the write token) for reads.")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="FILE",
              help="Accept PUTs only of signatures made by a key in FILE (repeatable).")
@click.option("--access-log", metavar="FILE", default=None, help="Append one line per request ('-': stderr).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads [default: 16].")
@click.option("--max-connections", type=click.IntRange(1, 65536), default=None,
              help="Connection cap: a new connection then evicts the one waiting longest for its request head, "
                   "or gets 503 if none is waiting [default: 512].")
@click.option("--header-timeout", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="A request head must arrive within this, else 408 [default: 10].")
@click.option("--request-timeout", type=click.FloatRange(0.1, 3600), default=None, metavar="SECONDS",
              help="Body, handling and response must finish within this [default: 30].")
@click.option("--user", "run_as", metavar="NAME", default=None,
              help="When started as root: become this user once the socket is bound and keys/tokens are read.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log and access-log lines: text, or JSON lines (ts, level, msg, fields) as sync writes.")
def serve(config_file: str | None, sigstore: str | None, listen: str | None, tls_cert: str | None,
          tls_key: str | None, token_file: str | None, read_token_file: str | None, trusted_keys: tuple[str, ...],
          access_log: str | None, threads: int | None, max_connections: int | None, header_timeout: float | None,
          request_timeout: float | None, run_as: str | None = None, log_format: str = "text") -> int:
    """Serve SIGSTORE over HTTP(S) until SIGTERM/Ctrl-C.

    \b
    GET/HEAD /<repo path>@sha256=<hex>/signature-N    lookaside for podman/CRI-O/skopeo
    GET/PUT  /extensions/v2/<repo>/signatures/<digest> signature extension API (PUT needs --token-file)
    GET/HEAD /.atomicsig/journal                        sync journal (Range, ETag)
    GET      /healthz, /metrics                         health and Prometheus metrics
    """
    from atomicsig.serve import config as serve_config
    from atomicsig.serve import server

    cfg = serve_config.load(config_file, {
        "sigstore": sigstore, "listen": listen, "tls-cert": tls_cert, "tls-key": tls_key, "token-file": token_file,
        "read-token-file": read_token_file, "access-log": access_log, "threads": threads,
        "trusted-keys": list(trusted_keys), "max-connections": max_connections, "header-timeout": header_timeout,
        "request-timeout": request_timeout})
    if run_as:
        from atomicsig.privdrop import check_user

        check_user(run_as)  # an unknown --user is refused before anything is bound or announced (exit 2)
    config = cfg.server_config()
    _setup_logging(cfg.access_log)  # opened before privileges are dropped, as the unit expects
    use_log_format(log_format, "atomicsig.server", "atomicsig.access")
    app = server.SignatureServer(config)
    try:
        httpd = server.make_server(app, cfg.listen, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, limits=cfg.limits)
        # Bind before saying anything: a busy port or an address that is not ours is a one-line error, exit 2
        # (httpd.ListenError), never a banner followed by a traceback (issue 11 #4).
        httpd.prepare()
    except BaseException:
        app.close()
        raise
    import signal

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)
    try:
        who = None
        if run_as:
            from atomicsig.privdrop import drop_privileges

            who = drop_privileges(run_as)
        scheme = "https" if cfg.tls else "http"
        click.echo(f"atomicsig serve: {cfg.sigstore} on {scheme}://{httpd.address} "
                   f"(PUT {'enabled' if config.write_token else 'disabled'})", err=True)
        if who is not None:
            click.echo(f"atomicsig serve: running as {who.user} (uid {who.uid}, gid {who.gid})", err=True)
        httpd.serve()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.stop()
        app.close()
    return EXIT_OK


def _setup_logging(access_log: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(message)s")
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    logging.getLogger("atomicsig.server").addHandler(err)
    logging.getLogger("atomicsig.server").setLevel(logging.INFO)
    if access_log:
        try:
            handler: logging.Handler = err if access_log == "-" else logging.FileHandler(access_log)
        except OSError as exc:
            raise InputError(f"cannot open access log {access_log}: {exc.strerror or exc}") from exc
        handler.setFormatter(fmt)
        acc = logging.getLogger("atomicsig.access")
        acc.addHandler(handler)
        acc.setLevel(logging.INFO)
        acc.propagate = False
