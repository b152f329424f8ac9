"""The version, in one place: the package metadata, ``--version`` and every signature's creator read it."""

__version__ = "0.1.0"

#: Written into optional.creator of every signature. containers-signature(5) asks that the creator name the
#: software and a version that changes when the format or semantics change.
CREATOR = f"atomicsig {__version__}"
