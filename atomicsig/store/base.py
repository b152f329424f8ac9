"""The interface every signature store implements, and what it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from atomicsig.errors import StorageError
from atomicsig.format.reference import Reference


@dataclass(frozen=True)
class StoredSignature:
    """One signature as found in a store, with where it came from (for messages)."""

    index: int
    blob: bytes
    location: str
    #: Lookaside reads sniff every blob and fail as a whole on an unrecognized one; the extension API does not.
    sniffed: bool = True


@dataclass(frozen=True)
class AppendResult:
    location: str
    index: int | None
    created: bool  # False when identical bytes were already stored


class SignatureStore(ABC):
    """Where simple signatures of images live."""

    @abstractmethod
    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        """All signatures of ``digest`` in ``ref``'s repository, in index order."""

    @abstractmethod
    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        """Store one more signature; identical bytes already present are not stored twice."""

    @abstractmethod
    def describe(self) -> str:
        """Human-readable location, for messages."""

    def append_unless(self, ref: Reference, digest: str, blob: bytes,
                      present: Callable[[list[StoredSignature]], str | None]) -> AppendResult:
        """Append ``blob`` unless ``present`` (given the current signatures) names one that makes it redundant;
        then returns that location with ``created=False``.

        Meant for "sign first, then store unless someone stored an equivalent one meanwhile". This default is a
        plain read then append (remote backends cannot lock); :class:`DirectoryStore` makes it atomic.
        """
        found = present(self.read(ref, digest))
        if found is not None:
            return AppendResult(found, None, False)
        return self.append(ref, digest, blob)


class TooManySignatures(StorageError):
    """A digest has 128 or more signatures (file or HTTP lookaside): containers/image refuses to read any of them
    (SPEC §3.2, §8). Still "could not decide" for ``verify`` (a subclass changes no caller); ``mirror`` tells it
    apart to refuse that digest with its own reason."""
