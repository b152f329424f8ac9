"""atomicsig: GPG "simple signing" for container images, node trust policy, and sigstore sync."""

from atomicsig.version import __version__

__all__ = ["__version__"]
