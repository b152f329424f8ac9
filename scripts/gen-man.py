#!/usr/bin/env python3
"""Write atomicsig's man pages (roff, man(7) macros) from the click command tree.

Usage: ``python scripts/gen-man.py OUTDIR`` writes ``atomicsig.1`` and one ``atomicsig-CMD[-SUB].1`` per command
and subcommand (git's naming, so ``man atomicsig-serve`` works and the units' ``Documentation=man:…`` resolve).

Why generated and hand-written: the pages must never drift from ``--help`` (issue 11, "man pages generated from
the CLI"), so the text comes from the same click objects. click-man on PyPI does this too, but it is one more
build dependency with a setuptools-command integration we do not use, for ~150 lines; roff for man(7) is small
and stable (groff_man(7)). Output is reproducible: no date unless SOURCE_DATE_EPOCH is set.
"""

from __future__ import annotations

import datetime
import inspect
import os
import sys
from pathlib import Path

import click

#: Extra sections for the pages the systemd units point at (Documentation=man:atomicsig-serve(1) …).
FILES: dict[str, list[tuple[str, str]]] = {
    "serve": [
        ("/etc/atomicsig/serve.yaml", "configuration (docs/serve.md)"),
        ("/etc/atomicsig/write-token", "write token, root-only; handed to the unit with LoadCredential="),
        ("/var/lib/atomic/sigstore", "the sigstore served"),
        ("/var/log/atomicsig/access.log", "access log when access-log: points there (LogsDirectory=atomicsig)"),
        ("/usr/lib/systemd/system/atomicsig-serve.service", "systemd unit"),
    ],
    "sync": [
        ("/etc/atomicsig/sync.yaml", "configuration (docs/sync.md)"),
        ("/var/lib/atomic/sigstore", "the local sigstore kept in sync"),
        ("/var/lib/atomicsig", "state and quarantine (StateDirectory=atomicsig)"),
        ("/usr/lib/systemd/system/atomicsig-sync.service", "systemd unit"),
    ],
}

EXIT_STATUS = [
    ("0", "success"),
    ("1", "a negative answer: rejected, changes pending"),
    ("2", "usage or input error"),
    ("3", "could not decide: registry down, gpg failure"),
]


def esc(text: str) -> str:
    """Escape text for roff: backslashes, a leading dot or quote that would start a request, and non-ASCII
    characters as ``\\[uXXXX]`` (groff without preconv and mandoc both read those; raw UTF-8 they may not)."""
    text = text.replace("\\", "\\e")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def opt(text: str) -> str:
    """Option names: escaped, with ASCII hyphen-minus kept as such (\\-) so they can be copied and searched."""
    return esc(text).replace("-", "\\-")


def paragraphs(doc: str) -> str:
    """click help text to roff: blank lines separate paragraphs; a ``\\b`` line keeps the next one unwrapped."""
    out: list[str] = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        if para.startswith("\b"):
            body = para.split("\n", 1)[1] if "\n" in para else ""
            out += [".PP", ".nf", esc(body), ".fi"]
        else:
            out += [".PP", esc(" ".join(line.strip() for line in para.splitlines()))]
    return "\n".join(out)


def first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n")[0].replace("\n", " ").strip().rstrip(".")


def subcommands(cmd: click.Command, ctx: click.Context) -> list[tuple[str, click.Command]]:
    if not isinstance(cmd, click.Group):
        return []
    found = []
    for name in cmd.list_commands(ctx):
        sub = cmd.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            found.append((name, sub))
    return found


def page(path: list[str], cmd: click.Command, ctx: click.Context, version: str, date: str) -> str:
    """One man page for the command at ``path`` (["atomicsig", "keys", "generate"])."""
    name = "-".join(path)
    summary = first_line(cmd.help) or cmd.get_short_help_str(limit=200)
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    title = opt(name.upper())
    lines = [
        f'.TH {title} 1 "{date}" "atomicsig {version}" "atomicsig manual"',
        ".SH NAME",
        f"{opt(name)} \\- {esc(summary)}",
        ".SH SYNOPSIS",
        f".B {opt(' '.join(path))}",
        opt(usage),
        ".SH DESCRIPTION",
        paragraphs(cmd.help or summary),
    ]
    records = [rec for p in cmd.get_params(ctx) if (rec := p.get_help_record(ctx)) is not None]
    if records:
        lines.append(".SH OPTIONS")
        for flags, help_text in records:
            lines += [".TP", f".B {opt(flags)}", esc(help_text.replace("\n", " ")) or "\\&"]
    subs = subcommands(cmd, ctx)
    if subs:
        lines.append(".SH COMMANDS")
        for sub_name, sub in subs:
            sub_page = "-".join([*path, sub_name])
            lines += [".TP", f".B {opt(sub_name)}",
                      f"{esc(sub.get_short_help_str(limit=200))} See \\fB{opt(sub_page)}\\fR(1)."]
    if len(path) == 1 or path[1] in FILES:
        files = FILES.get(path[1], []) if len(path) > 1 else [
            ("/etc/atomicsig/", "configuration: serve.yaml, sync.yaml, keys/"),
            ("/var/lib/atomic/sigstore", "the default lookaside sigstore (SPEC section 3.1)"),
        ]
        lines.append(".SH FILES")
        for file_path, what in files:
            lines += [".TP", f".I {esc(file_path)}", esc(what)]
    lines.append(".SH EXIT STATUS")
    for code, what in EXIT_STATUS:
        lines += [".TP", f".B {code}", esc(what)]
    see = ["-".join(path[:-1])] if len(path) > 1 else []
    see += ["-".join([*path, s]) for s, _ in subs]
    lines.append(".SH SEE ALSO")
    refs = [f"\\fB{opt(s)}\\fR(1)" for s in see]
    refs += ["\\fBskopeo\\fR(1)", "\\fBcontainers\\-policy.json\\fR(5)", "\\fBcontainers\\-registries.d\\fR(5)"]
    lines.append(",\n".join(refs))
    lines.append("Full documentation: /usr/share/doc/atomicsig/ (README.md, docs/*.md).")
    return "\n".join(lines) + "\n"


def walk(path: list[str], cmd: click.Command, parent: click.Context | None, version: str,
         date: str) -> dict[str, str]:
    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    pages = {"-".join(path) + ".1": page(path, cmd, ctx, version, date)}
    for sub_name, sub in subcommands(cmd, ctx):
        pages.update(walk([*path, sub_name], sub, ctx, version, date))
    return pages


def generate() -> dict[str, str]:
    """All pages, by file name. Imported by tests/test_install.py to check that every command has one."""
    from atomicsig.cli import cli
    from atomicsig.version import __version__

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = (datetime.datetime.fromtimestamp(int(epoch), tz=datetime.UTC).strftime("%Y-%m-%d") if epoch else "")
    return walk(["atomicsig"], cli, None, __version__, date)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: gen-man.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(generate().items()):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
