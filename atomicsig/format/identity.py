"""``signedIdentity`` matching: does the identity a signature claims fit the image being pulled? (SPEC §2.4)

Pure. One small class per rule, as in containers/image ``policy_reference_match.go``; a policy requirement holds
one of these. *intended* is the reference the user pulls (normalized, ``:latest`` added if name-only); *signed*
is ``critical.identity.docker-reference`` from the payload, normalized, no tag defaulting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import PolicyError, ReferenceError_
from atomicsig.format import reference
from atomicsig.format.reference import Reference


def _parse_signed(value: str) -> Reference | None:
    try:
        return reference.parse(value)
    except ReferenceError_:
        return None


class IdentityMatcher(ABC):
    """One signedIdentity rule."""

    type: str = ""

    @abstractmethod
    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        """True if a signature claiming ``signed_value`` is acceptable for ``intended``."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type}

    def describe(self) -> str:
        return self.type


def _repo_digest_or_exact(intended: Reference, signed: Reference) -> bool:
    if signed.name_only:
        return False
    if intended.tag is not None:
        return str(signed) == str(intended)
    if intended.digest is not None:
        return signed.name == intended.name
    return False


@dataclass(frozen=True)
class MatchExact(IdentityMatcher):
    type = "matchExact"

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if intended is None or signed is None or intended.name_only or signed.name_only:
            return False
        return str(signed) == str(intended)


@dataclass(frozen=True)
class MatchRepoDigestOrExact(IdentityMatcher):
    type = "matchRepoDigestOrExact"

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if intended is None or signed is None:
            return False
        return _repo_digest_or_exact(intended, signed)


@dataclass(frozen=True)
class MatchRepository(IdentityMatcher):
    type = "matchRepository"

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if intended is None or signed is None:
            return False
        return signed.name == intended.name


@dataclass(frozen=True)
class ExactReference(IdentityMatcher):
    docker_reference: str = ""
    type = "exactReference"

    def __post_init__(self) -> None:
        try:
            ref = reference.parse(self.docker_reference)
        except ReferenceError_ as exc:
            raise PolicyError(f"exactReference: invalid dockerReference {self.docker_reference!r}") from exc
        if ref.name_only:
            raise PolicyError(f"exactReference: dockerReference {self.docker_reference!r} needs a tag or digest")

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if signed is None or signed.name_only:
            return False
        return str(signed) == str(reference.parse(self.docker_reference))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "dockerReference": self.docker_reference}

    def describe(self) -> str:
        return f"{self.type} {self.docker_reference}"


@dataclass(frozen=True)
class ExactRepository(IdentityMatcher):
    docker_repository: str = ""
    type = "exactRepository"

    def __post_init__(self) -> None:
        try:
            reference.parse(self.docker_repository)
        except ReferenceError_ as exc:
            raise PolicyError(f"exactRepository: invalid dockerRepository {self.docker_repository!r}") from exc

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if signed is None:
            return False
        return signed.name == reference.parse(self.docker_repository).name

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "dockerRepository": self.docker_repository}

    def describe(self) -> str:
        return f"{self.type} {self.docker_repository}"


def _valid_prefix(prefix: str) -> bool:
    """``validateIdentityRemappingPrefix``: a bare host[:port], or ``host/path`` taken literally.

    Not normalized: ``docker.io/library`` is a valid prefix (normalizing it would yield
    ``docker.io/library/library``), and the remapped result is checked for canonical form at match time.
    """
    if reference.is_valid_domain(prefix):
        return True
    host, sep, path = prefix.partition("/")
    return bool(sep) and reference.is_valid_domain(host) and reference.is_valid_path(path)


@dataclass(frozen=True)
class RemapIdentity(IdentityMatcher):
    prefix: str = ""
    signed_prefix: str = ""
    type = "remapIdentity"

    def __post_init__(self) -> None:
        for label, value in (("prefix", self.prefix), ("signedPrefix", self.signed_prefix)):
            if not _valid_prefix(value):
                raise PolicyError(f"remapIdentity: invalid {label} {value!r} (want host[:port] or host/namespace)")

    def remap(self, intended: Reference) -> Reference | None:
        """The reference the signature must claim, or None if the remapped string is not canonical."""
        name = intended.name
        if name == self.prefix or name.startswith(self.prefix + "/"):
            remapped = str(intended).replace(self.prefix, self.signed_prefix, 1)
            try:
                return reference.parse(remapped, canonical=True)
            except ReferenceError_:
                return None
        return intended

    def matches(self, intended: Reference | None, signed_value: str) -> bool:
        signed = _parse_signed(signed_value)
        if intended is None or signed is None:
            return False
        target = self.remap(intended)
        return target is not None and _repo_digest_or_exact(target, signed)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "prefix": self.prefix, "signedPrefix": self.signed_prefix}

    def describe(self) -> str:
        return f"{self.type} {self.prefix} -> {self.signed_prefix}"


_SIMPLE: dict[str, type[IdentityMatcher]] = {
    "matchExact": MatchExact, "matchRepoDigestOrExact": MatchRepoDigestOrExact, "matchRepository": MatchRepository,
}
IDENTITY_TYPES = ("matchExact", "matchRepoDigestOrExact", "matchRepository", "exactReference", "exactRepository",
                  "remapIdentity")


def from_json(obj: Any) -> IdentityMatcher:
    """Parse a policy.json ``signedIdentity`` object with c/image's exact field sets."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise PolicyError("signedIdentity must be an object with a string \"type\"")
    kind = obj["type"]
    fields = {"exactReference": {"type", "dockerReference"}, "exactRepository": {"type", "dockerRepository"},
              "remapIdentity": {"type", "prefix", "signedPrefix"}}.get(kind, {"type"})
    if kind not in IDENTITY_TYPES:
        raise PolicyError(f"unknown signedIdentity type {kind!r}")
    extra = set(obj) - fields
    missing = fields - set(obj)
    if extra:
        raise PolicyError(f"unknown key {sorted(extra)[0]!r} in signedIdentity {kind}")
    if missing:
        raise PolicyError(f"key {sorted(missing)[0]!r} missing in signedIdentity {kind}")
    for k in fields - {"type"}:
        if not isinstance(obj[k], str):
            raise PolicyError(f"signedIdentity {kind}: {k} must be a string")
    if kind in _SIMPLE:
        return _SIMPLE[kind]()
    if kind == "exactReference":
        return ExactReference(obj["dockerReference"])
    if kind == "exactRepository":
        return ExactRepository(obj["dockerRepository"])
    return RemapIdentity(obj["prefix"], obj["signedPrefix"])


DEFAULT = MatchRepoDigestOrExact()
