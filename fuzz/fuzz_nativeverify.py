"""Fuzz target: the in-process signature verifier (atomicsig.nativeverify, atomicsig.pgpkeys).

It decides on untrusted bytes from sigstores, sync peers and uploads, so it gets its own target. Invariants: only
SignatureFormatError escapes ``verify``; and **nothing is accepted that gpg rejects** — every accepted input is
re-verified by gpg itself (gpg.TrustedKeys) and must give the same signer and payload. The trusted key is the
corpus key (fuzz/corpus/blob/pubkey.gpg) that signed the seed messages, so mutations of valid messages reach the
cryptographic check and not only the parser.
"""

from __future__ import annotations

from pathlib import Path

import atheris
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import SignatureFormatError
    from atomicsig.gnupg import keyring as gpg
    from atomicsig.gnupg import trusted as nativeverify

_KEY = (Path(__file__).resolve().parent / "corpus" / "blob" / "pubkey.gpg").read_bytes()
_NATIVE = nativeverify.NativeTrustedKeys([_KEY])
_GPG = gpg.TrustedKeys([_KEY])


def TestOneInput(data: bytes) -> None:
    try:
        got = _NATIVE.verify(data)
    except SignatureFormatError:
        return
    ref = _GPG.verify(data)  # raises (a finding) if gpg rejects what we accepted
    assert (got.signer, got.payload) == (ref.signer, ref.payload), "native and gpg disagree"


if __name__ == "__main__":
    main(TestOneInput)
