"""Fuzz target: strict parsing of the simple-signing JSON payload (atomicsig.payload.parse).

Invariants: only SignatureFormatError escapes; an accepted payload has a valid digest and round-trips through
payload.build (build → parse gives the same Payload) whenever it has the fields build writes.
"""

from __future__ import annotations

import atheris
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig.errors import SignatureFormatError
    from atomicsig.format import payload, reference


def check_payload(data: bytes) -> None:
    try:
        p = payload.parse(data)
    except SignatureFormatError:
        return
    reference.validate_digest(p.manifest_digest)
    assert p.timestamp is None or -(2**63) <= p.timestamp < 2**63
    if p.docker_reference and p.creator is not None and p.timestamp is not None:
        rebuilt = payload.build(p.docker_reference, p.manifest_digest, creator=p.creator, timestamp=p.timestamp)
        assert payload.parse(rebuilt) == p, (data, rebuilt)


def TestOneInput(data: bytes) -> None:
    check_payload(data)


if __name__ == "__main__":
    main(TestOneInput)
