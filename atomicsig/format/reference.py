"""Docker image references, parsed and normalized exactly as containers/image does (SPEC §7.2).

Pure: no I/O. Everything that turns an image name into a signature identity, a policy scope, a registries.d key,
or a lookaside path goes through :class:`Reference`, so there is one parser for the whole tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from atomicsig.errors import ReferenceError_

_ALNUM = r"[a-z0-9]+"
# ``[-]+``, not docker's older ``[-]*``: same language, but an empty separator makes ``(alnum sep? alnum)*``
# ambiguous and Python's backtracking engine exponential (fuzz finding: 26 characters took 30 s).
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
# IPv6 literals are accepted by newer docker/reference; we accept the bracketed form too.
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
# ``\Z`` not ``$`` (which also matches before a trailing newline), and ASCII ``\w`` as in Go (fuzz findings).
_REFERENCE_RE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?\Z", re.ASCII)
_ANCHORED_HEX64 = re.compile(r"^[a-f0-9]{64}\Z")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}\Z")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*\Z")

#: go-digest algorithms and their exact hex lengths (go-digest algorithm.go).
DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_STRICT = re.compile(r"^(sha256|sha384|sha512):([a-f0-9]+)\Z")

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255


def validate_digest(value: str) -> str:
    """Validate a digest as go-digest ``Parse`` does and return it. Raises ReferenceError_."""
    m = _DIGEST_STRICT.match(value)
    if not m or len(m.group(2)) != DIGEST_ALGORITHMS[m.group(1)]:
        raise ReferenceError_(f"invalid digest {value!r}: expected sha256:<64 lowercase hex>")
    return value


@dataclass(frozen=True)
class Reference:
    """A normalized docker reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``Name()``: domain/path, no tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def __str__(self) -> str:
        s = self.name
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s

    def with_tag_default(self) -> Reference:
        """``TagNameOnly``: add ``:latest`` to a name-only reference (docker transport behaviour)."""
        return Reference(self.domain, self.path, "latest") if self.name_only else self

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, validate_digest(digest))

    def without_digest(self) -> Reference:
        return Reference(self.domain, self.path, self.tag, None)

    def identity(self) -> str:
        """The identity a signature claims for this reference: tag if present, else digest.

        ``host/repo:tag@sha256:…`` signs the *tag* identity with the given digest (CLI convention), which is
        also what podman/CRI-O compare against when a user pulls by tag.
        """
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return str(self)

    def policy_identity(self) -> str:
        """``PolicyConfigurationIdentity``: name:tag or name@digest (tag wins, as in c/image)."""
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return self.name

    def policy_namespaces(self) -> list[str]:
        """``PolicyConfigurationNamespaces``: repository, parent namespaces, host[:port], then ``*.`` wildcards."""
        out: list[str] = []
        name = self.name
        while True:
            out.append(name)
            if "/" not in name:
                break
            name = name.rsplit("/", 1)[0]
        host = name.split(":", 1)[0] if not name.startswith("[") else name
        while "." in host:
            host = host.split(".", 1)[1]
            out.append("*." + host)
        return out

    def scopes(self) -> list[str]:
        """All policy/registries.d scopes that can match this reference, most specific first."""
        ident = self.policy_identity()
        ns = self.policy_namespaces()
        return ns if ident == ns[0] else [ident, *ns]


def parse(value: str, *, canonical: bool = False) -> Reference:
    """Parse and normalize an image reference like ``ParseNormalizedNamed``.

    With ``canonical=True`` behave like ``ParseNamed``: the input must already be fully expanded.
    Tags/digests are kept as given; no ``:latest`` is added (see :meth:`Reference.with_tag_default`).

    Memoized (a :class:`Reference` is immutable): the webhook and ``audit`` parse the same few names several
    times per image (scope lookup, identity, lookaside path), and the grammar's regular expressions were a tenth
    of an uncached admission review's CPU (issue 17, bench/load_webhook.py). Errors are not cached.
    """
    if not isinstance(value, str) or not value:
        raise ReferenceError_("invalid image reference: empty")
    return _parse(value, canonical)


@lru_cache(maxsize=4096)
def _parse(value: str, canonical: bool) -> Reference:
    if _ANCHORED_HEX64.match(value):
        raise ReferenceError_(f"invalid image reference {value!r}: a bare 64-hex string is an image ID, not a name")
    if value.startswith("docker://"):
        raise ReferenceError_(f"invalid image reference {value!r}: drop the docker:// transport prefix")
    m = _REFERENCE_RE.match(value)
    if not m:
        # Produce a more helpful message than "no match" for the commonest mistake.
        if any(c.isupper() for c in value.split("@", 1)[0].split("/", 1)[-1].split(":", 1)[0]):
            raise ReferenceError_(f"invalid image reference {value!r}: repository name must be lowercase")
        raise ReferenceError_(f"invalid image reference {value!r}")
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if digest is not None:
        validate_digest(digest)
    i = name.find("/")
    first = name[:i] if i != -1 else ""
    if i == -1 or (not any(c in first for c in ".:") and first != "localhost"):
        domain, rest = DEFAULT_DOMAIN, name
    else:
        domain, rest = first, name[i + 1 :]
        if not _DOMAIN_RE.match(domain):
            # "a_b.c/x" matches the grammar as a path, but the host split rule then picks "a_b.c" as the registry
            # (fuzz finding): refuse, rather than return a Reference whose domain no scope or host can match.
            raise ReferenceError_(f"invalid image reference {value!r}: {domain!r} is not a valid registry host")
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_REPO_PREFIX + rest
    if not _PATH_RE.match(rest):
        raise ReferenceError_(f"invalid image reference {value!r}: repository name must be lowercase")
    # Measured after normalization, as docker's ParseNormalizedNamed parses the expanded name; measuring the input
    # let "a/…" (≤ 255) expand to "docker.io/a/…" (> 255), which then failed to parse again (fuzz finding).
    if len(domain) + 1 + len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError_(f"invalid image reference {value!r}: repository name longer than 255 characters")
    ref = Reference(domain, rest, tag, digest)
    if canonical and str(ref) != value:
        raise ReferenceError_(f"image reference {value!r} is not canonical; did you mean {str(ref)!r}?")
    return ref


def parse_repository(value: str) -> Reference:
    """Parse a name-only repository (no tag, no digest), normalized."""
    ref = parse(value)
    if not ref.name_only:
        raise ReferenceError_(f"{value!r} must be a repository without tag or digest")
    return ref


def is_valid_domain(value: str) -> bool:
    return bool(_DOMAIN_RE.match(value))


def is_valid_path(value: str) -> bool:
    """A repository path (lowercase components separated by ``/``), without host, tag or digest."""
    return bool(_PATH_RE.match(value))


def implicit_docker_hub_warning(text: str) -> str | None:
    """A warning if ``text`` names no registry host and so silently means Docker Hub, else None.

    ``team/app@sha256:…`` is ``docker.io/team/app@sha256:…`` to every containers/image tool (SPEC §7.2), which is
    rarely what someone signing or verifying a private image meant. One place for sign and verify to call; the
    caller prints it (this module stays free of I/O). Unparsable text gets None: the parse error says more.
    """
    value = text.strip()
    try:
        ref = parse(value)
    except ReferenceError_:
        return None
    first, sep, _ = value.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost"):
        return None
    return f"{value!r} names no registry host, so it means {str(ref)!r} on Docker Hub; write the host explicitly"
