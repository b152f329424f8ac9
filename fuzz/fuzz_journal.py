"""Fuzz target: the sync journal/feed parser and the follower's Content-Range parsing.

Surfaces: atomicsig.sync.journal (parse_header, iter_lines, parse_line, parse_sigpath) and the pure helpers of
atomicsig.sync.source (_range, _total). Invariants: only JournalError / InputError (journal) and SourceError
(Content-Range) escape; a parsed signature path is relative, normalized, free of ``..`` and stays under any root
it is joined to; it round-trips through str(); iter_lines yields only complete lines with increasing offsets.
"""

from __future__ import annotations

import contextlib
import os.path

import atheris
from _harness import main, uninstrument

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import InputError
    from atomicsig.format import sigpath
    from atomicsig.store import journal
    from atomicsig.sync import source
uninstrument(journal, "iter_lines")  # atheris 2.3 miscompiles it (see _harness.uninstrument)

ROOT = "/srv/sigstore"


def check_sigpath(sp: sigpath.SigPath) -> None:
    rel = str(sp)
    assert not rel.startswith("/") and ".." not in rel.split("/") and os.path.normpath(rel) == rel, rel
    joined = os.path.normpath(os.path.join(ROOT, rel))
    assert joined.startswith(ROOT + "/"), (rel, joined)
    assert sigpath.parse_sigpath(rel) == sp
    assert sigpath.parse_read_path(rel) == sp  # what the journal names, serve answers (one grammar)


def check_journal(data: bytes) -> None:
    with contextlib.suppress(journal.JournalError):
        journal.parse_header(data)
    base = 1000
    prev = base
    try:
        for line, end in journal.iter_lines(data, base):
            assert end > prev and data[end - base - 1:end - base] == b"\n" and b"\n" not in line
            prev = end
            try:
                rec = journal.parse_line(line, end)
            except (journal.JournalError, InputError):
                continue
            assert rec.op in journal.OPS and rec.end == end
            check_sigpath(rec.path)
    except journal.JournalError:
        pass
    value = data[:200].decode("latin-1")
    for candidate in (value, value.strip()):
        with contextlib.suppress(InputError):
            check_sigpath(sigpath.parse_sigpath(candidate))
        with contextlib.suppress(InputError):
            assert str(sigpath.parse_read_path(candidate)) == candidate
        try:
            start, total = source._range(candidate, 10)
            assert start >= 0 and (total is None or total >= 0)
        except source.SourceError:
            pass
        total = source._total(candidate)
        assert total is None or total >= 0


def TestOneInput(data: bytes) -> None:
    check_journal(data)


if __name__ == "__main__":
    main(TestOneInput)
