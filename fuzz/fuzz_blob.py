"""Fuzz target: signature blob sniffing and the read-only OpenPGP parser (atomicsig.blob, atomicsig.openpgp).

Invariants: only SignatureFormatError escapes; the literal data of a parsed message is bounded by
MAX_DECOMPRESSED (no zip bomb gets through) and by nothing else; what simple_signing_body returns is a suffix
of the blob; untrusted_signer agrees with parse_message. libFuzzer's -rss_limit_mb catches unbounded allocation.
"""

from __future__ import annotations

import atheris
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import SignatureFormatError
    from atomicsig.format import blob
    from atomicsig.openpgp import packets as openpgp


def check_blob(data: bytes) -> None:
    body: bytes | None
    try:
        body = blob.simple_signing_body(data)
    except SignatureFormatError:
        body = None
    else:
        assert data.endswith(body), "body is not a suffix of the blob"
    for candidate in (data, body):
        if candidate is None:
            continue
        try:
            msg = openpgp.parse_message(candidate)
        except SignatureFormatError:
            continue
        assert len(msg.literal) <= openpgp.MAX_DECOMPRESSED + len(candidate)
        assert msg.signatures, "a parsed message without signatures"
        signer = openpgp.untrusted_signer(candidate)
        first = msg.signatures[0]
        assert signer == (first.issuer_fingerprint or first.issuer_keyid)
        assert signer is None or all(c in "0123456789ABCDEF" for c in signer), signer


def TestOneInput(data: bytes) -> None:
    check_blob(data)


if __name__ == "__main__":
    main(TestOneInput)
