"""atomicsig: GPG "simple signing" for container images, node trust policy, and sigstore sync.

The public surface is small on purpose (see README "Library use"): `atomicsig.reference`, `atomicsig.payload`,
`atomicsig.signing`, `atomicsig.verify`, `atomicsig.errors`. Everything else is an implementation detail.
"""

__version__ = "0.1.0"

#: Written into optional.creator of every signature. containers-signature(5) asks that the creator name the
#: software and a version that changes when the format or semantics change.
CREATOR = f"atomicsig {__version__}"
