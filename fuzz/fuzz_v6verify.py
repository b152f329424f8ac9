"""Fuzz target: v6 and post-quantum verification (atomicsig.openpgp.sequoia through NativeTrustedKeys), issue 16.

Sequoia decides v6 signatures; atomicsig's own code around it (the one-message gate, the version/algorithm and
signature-size checks, the reasons read from packets after a refusal, certificate facts) runs on untrusted bytes.
Invariants: only SignatureFormatError escapes ``verify``; and **nothing is accepted that Sequoia alone refuses**
— every accepted input is re-verified by ``pysequoia.verify`` directly and must give the same signer and payload.
The trusted keys are the corpus certificates (fuzz/corpus/v6verify/certs.pgp: one v6 Ed25519, one v6
ML-DSA-65+Ed25519) that signed the seed messages, so mutations reach the cryptographic check.
"""

from __future__ import annotations

from pathlib import Path

import atheris
import pysequoia
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import SignatureFormatError
    from atomicsig.gnupg import trusted as nativeverify

_CERTS = (Path(__file__).resolve().parent / "corpus" / "v6verify" / "certs.pgp").read_bytes()
_NATIVE = nativeverify.NativeTrustedKeys([_CERTS])
_SQ = pysequoia.Cert.split_bytes(_CERTS)


def TestOneInput(data: bytes) -> None:
    try:
        got = _NATIVE.verify(data)
    except SignatureFormatError:
        return
    ref = pysequoia.verify(bytes=data, store=lambda _ids: _SQ)  # raises (a finding) if Sequoia refuses it
    signers = [s.certificate.upper() for s in ref.valid_sigs]
    assert signers == [got.signer] and ref.bytes == got.payload, "atomicsig and Sequoia disagree"


if __name__ == "__main__":
    main(TestOneInput)
