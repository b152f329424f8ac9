"""``atomicsig pack``: write the sync pack a joining node reads in one request (docs/sync.md, "Bulk first sync")."""

from __future__ import annotations

from pathlib import Path

import click

from atomicsig.cli.common import emit_json, json_option
from atomicsig.errors import EXIT_OK, InputError


@click.command()
@click.argument("sigstore", type=click.Path(file_okay=False))
@json_option
def pack(sigstore: str, as_json: bool) -> int:
    """Write SIGSTORE/.atomicsig/pack: the journal so far with every signature inlined.

    `atomicsig serve` and any static web server (nginx) then offer it next to the journal; a follower with an empty
    cursor reads it in one streaming request, verifies every signature and continues with the journal tail. Re-run
    it now and then (a timer): followers fetch only what the pack lacks, record by record. Run it again after
    `atomicsig index` (a new epoch makes the old pack unused).
    """
    from atomicsig.store.pack import pack_path, write_pack

    root = Path(sigstore)
    if not root.is_dir():
        raise InputError(f"{sigstore} is not a directory")
    head = write_pack(root)
    path = pack_path(root)
    out = {"sigstore": str(root), "pack": str(path), "records": head.records, "seq": head.seq,
           "journal_offset": head.offset, "epoch": head.epoch, "bytes": path.stat().st_size}
    if as_json:
        emit_json(out)
    else:
        click.echo(f"packed {head.records} journal records ({out['bytes']} bytes) into {path} "
                   f"(epoch {head.epoch}, up to seq {head.seq})")
    return EXIT_OK
