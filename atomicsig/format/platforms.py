"""Which instance of a manifest list / OCI index a node pulls (SPEC §2.2 "Multi-arch images").

Pure. A node evaluates its signature policy on the per-platform instance it selects, not on the list, so
``verify`` must pick the same instance. The selection follows containers/image ``internal/pkg/platform``
(``WantedPlatforms``, ``MatchesPlatform``) and ``internal/manifest`` (``ChooseInstance``): build the candidate
platforms in preference order, then take, for the first candidate that any instance matches, the first such
instance in list order. Matching is exact on os, architecture and variant.
"""

from __future__ import annotations

import platform as _host
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atomicsig.errors import InputError
from atomicsig.format.manifest import Instance

#: Python's machine names → Go's GOARCH, the architecture names images use.
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
           "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64",
           "loongarch64": "loong64"}

#: Known variants per architecture, most capable first (c/image ``compatibility``). amd64 is absent on purpose:
#: c/image detects amd64 micro-architecture levels only when asked to, and a default pull wants no variant.
_COMPATIBILITY = {"arm": ("v8", "v7", "v6", "v5"), "arm64": ("v8",)}
_PART = re.compile(r"^[a-z0-9_.-]+\Z")


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.arch, self.variant) if x)


def parse(text: str) -> Platform:
    """``os/arch[/variant]`` as podman's ``--platform`` takes it. Raises InputError."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(_PART.match(p) for p in parts):
        raise InputError(f"invalid platform {text!r}: want os/arch[/variant], e.g. linux/arm64")
    return Platform(*parts)


def _arm_variant() -> str:
    """The ARM variant of this CPU, as c/image reads it from /proc/cpuinfo ("CPU architecture")."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    m = re.search(r"^CPU architecture\s*:\s*(\S+)", text, re.MULTILINE | re.IGNORECASE)
    value = m.group(1).lower() if m else ""
    for variant, names in (("v8", ("8", "aarch64")), ("v7", ("7", "7m")), ("v6", ("6", "6tej")),
                           ("v5", ("5", "5t", "5te", "5tej"))):
        if value in names:
            return variant
    return ""


def current() -> Platform:
    """The platform a node on this machine pulls: linux, the runtime architecture, its ARM variant if any."""
    machine = _host.machine().lower()
    arch = _GOARCH.get(machine, "arm" if machine.startswith("arm") else machine)
    return Platform("linux", arch, _arm_variant() if arch in ("arm", "arm64") else "")


def wanted(choice: Platform | None = None) -> list[Platform]:
    """Candidate platforms in preference order (c/image ``WantedPlatforms``).

    With a variant: that variant, the less capable compatible ones, then no variant. Without: no variant first,
    then every known variant of the architecture.
    """
    chosen = choice or current()
    order = _COMPATIBILITY.get(chosen.arch, ())
    if chosen.variant:
        variants = list(order[order.index(chosen.variant):]) if chosen.variant in order else [chosen.variant]
        variants.append("")
    else:
        variants = ["", *order]
    return [Platform(chosen.os, chosen.arch, v) for v in variants]


def of_instance(inst: Instance) -> Platform | None:
    """The platform an instance declares, or None (an index entry without ``platform`` matches nothing)."""
    if not inst.platform:
        return None
    parts = inst.platform.split("/")
    return Platform(parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "")


def choose(instances: Sequence[Instance], choice: Platform | None = None) -> Instance | None:
    """The instance a node on ``choice`` (default: this machine) pulls, or None if it has none to pull."""
    declared = [(inst, of_instance(inst)) for inst in instances]
    for want in wanted(choice):
        for inst, plat in declared:
            if plat == want:
                return inst
    return None
