"""Fuzz target: the air-gap bundle reader (atomicsig.format.bundle.members) on untrusted bytes.

Invariants: only BundleError escapes (never a tarfile, gzip, zlib, Unicode or index error); every member yielded
has a name of the bundle format, a size within its kind's cap and the sum its manifest lists; a signature's name
joined to a sigstore root stays under it. Seeds are uncompressed bundles (fuzz/corpus/bundle), so mutations reach
the tar and manifest parsing rather than gzip's CRC check.
"""

from __future__ import annotations

import hashlib
import io
import os.path

import atheris
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.format import bundle

ROOT = "/srv/sigstore"


def TestOneInput(data: bytes) -> None:
    try:
        for member, sha in bundle.members(io.BytesIO(data)):
            kind = bundle.kind(member.name)
            assert len(member.data) <= bundle.limit(kind), member.name
            assert kind == "manifest" or hashlib.sha256(member.data).hexdigest() == sha, member.name
            if kind == "signature":
                rel = member.name[len(bundle.SIGSTORE_DIR):]
                joined = os.path.normpath(os.path.join(ROOT, rel))
                assert joined.startswith(ROOT + "/") and os.path.normpath(rel) == rel, rel
    except bundle.BundleError:
        pass


if __name__ == "__main__":
    main(TestOneInput)
