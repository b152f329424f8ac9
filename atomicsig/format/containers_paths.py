"""Where containers/image and containers/storage look for policy.json, registries.d and storage.conf (issue 14 item 4).

Pure: callers hand in the environment, the uid, an optional alternate root and, where a rule depends on whether a
file exists, a predicate. Two generations of the lookup exist, and a node runs exactly one of them:

``old`` — every released containers/image up to v5.39 (containers/image tag ``v5.23.1`` is what Debian 12's skopeo
1.9.3 and podman 4.3.1 are built with; container-libs ``image/`` at f0ddf1a7, 2026-04-01, still does the same):

* policy.json (``signature/policy_config.go`` ``defaultPolicyPathWithHomeDir``): ``SignaturePolicyPath`` (skopeo
  ``--policy``) if given; else ``$HOME/.config/containers/policy.json`` if it exists — ``$HOME`` from
  ``homedir.Get()`` (containers/storage ``pkg/unshare`` ``HomeDir``: ``$HOME``, else the passwd entry), so
  ``$XDG_CONFIG_HOME`` is *not* consulted; else ``/etc/containers/policy.json`` (``policy_paths_common.go``),
  prefixed by ``RootForImplicitAbsolutePaths``. One file, no merging.
* registries.d (``docker/registries_d.go`` ``registriesDirPathWithHomeDir``): ``RegistriesDirPath`` if given; else
  ``$HOME/.config/containers/registries.d`` if it exists — and then ``/etc/containers/registries.d`` is not read at
  all; else ``/etc/containers/registries.d``. Every ``*.yaml`` in the one chosen directory is merged
  (``loadAndMergeConfig``; a scope defined in two files is an error).

``new`` — containers/image after the move to ``go.podman.io/storage/pkg/configfile`` (read in podman c6580b4a,
2026-05-19, which vendors ``go.podman.io/image/v5 v5.39.3-0.20260515151312-e2c14667a598``, reporting 5.40.0-dev):

* policy.json (``signature/policy_config.go`` ``DefaultPolicy`` with ``configfile.File{Name: "policy",
  Extension: "json", DoNotLoadDropInFiles, EnvironmentName: "CONTAINERS_POLICY_JSON", ErrorIfNotFound}``):
  ``$CONTAINERS_POLICY_JSON`` alone if set (it must exist); else the first existing of the user file
  (``configfile/path_unix.go`` ``UserConfigPath``: ``$XDG_CONFIG_HOME/containers`` if the variable is set, else
  ``$HOME/.config/containers``), ``/etc/containers/policy.json`` (admin), ``/usr/share/containers/policy.json``
  (vendor) — the last two prefixed by the alternate root (``configfile/parse.go`` ``getSearchPaths``).
* registries.d (``docker/registries_d.go`` ``loadRegistryConfiguration`` with ``Name: "registries", Extension:
  "yaml", DoNotLoadMainFiles, DoNotUseExtensionForConfigName``): drop-in directories, highest priority first
  (``getDropInPaths``/``getDropInPathsUnderMain``): ``<user>/registries.d``; ``/etc/containers/registries.rootless.d/
  <uid>`` and ``/etc/containers/registries.rootless.d`` (uid > 0) or ``/etc/containers/registries.rootful.d``
  (uid 0); ``/etc/containers/registries.d``; the same three under ``/usr/share/containers``. ``readDropInsFromPaths``
  keeps, per file *name*, the file of the highest-priority directory, then reads them in sorted name order;
  scope conflicts across the surviving files are still errors.

storage.conf (containers/storage): ``old`` = ``types/options.go`` ``loadDefaultStoreOptions`` /
``DefaultConfigFile`` at containers/storage v1.43.0 (podman 4.3.1): ``$CONTAINERS_STORAGE_CONF`` alone if set; else
``$XDG_CONFIG_HOME/containers/storage.conf`` if that variable is set and the file exists (for root too), else
``/etc/containers/storage.conf`` if it exists, else ``/usr/share/containers/storage.conf``; a rootless user's own
``$XDG_CONFIG_HOME/containers/storage.conf`` (or ``~/.config/containers/storage.conf``) replaces all of it when
present. ``new`` = container-libs ``storage/types/options.go`` ``LoadStoreOptions``: ``configfile`` main files
(user, ``/etc``, ``/usr/share``; first existing) then ``storage.conf.d`` drop-ins (only the main-file order is
modelled here).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from atomicsig.errors import InputError

Generation = Literal["old", "new"]
GENERATIONS: tuple[Generation, ...] = ("old", "new")

#: c/image versions known on nodes → generation. The configfile lookup is on container-libs main after
#: 2026-04-01 and unreleased at the time of reading, so every released version up to 5.39.x is "old".
_NEW_FROM = (5, 40, 0)

_OLD_POLICY = "c/image v5.23.1 signature/policy_config.go defaultPolicyPathWithHomeDir"
_OLD_REGD = "c/image v5.23.1 docker/registries_d.go registriesDirPathWithHomeDir"
_NEW_POLICY = "go.podman.io/image/v5 (podman c6580b4a vendor) signature/policy_config.go DefaultPolicy + configfile"
_NEW_REGD = "go.podman.io/image/v5 (podman c6580b4a vendor) docker/registries_d.go loadRegistryConfiguration"
_OLD_STORAGE = "c/storage v1.43.0 types/options.go loadDefaultStoreOptions, types/utils.go DefaultConfigFile"
_NEW_STORAGE = "container-libs f0ddf1a7 storage/types/options.go LoadStoreOptions + configfile"


def generation_for_c_image(version: str) -> Generation:
    """The lookup generation of a containers/image version string such as ``5.23.1`` (``v`` and ``-dev`` allowed).

    A ``5.40.0-dev`` build may be either (the switch landed during that cycle); it is reported as ``new``,
    the caller should say so when it matters.
    """
    core = version.strip().removeprefix("v").split("-", 1)[0].split("+", 1)[0]
    try:
        parts = tuple(int(p) for p in core.split("."))
    except ValueError:
        raise InputError(f"not a containers/image version: {version!r}") from None
    if len(parts) != 3:
        raise InputError(f"not a containers/image version: {version!r}")
    return "new" if parts >= _NEW_FROM else "old"


@dataclass(frozen=True)
class UserEnv:
    """The parts of a process environment the lookups use. ``home`` is already resolved (``$HOME``, else passwd).

    ``xdg_config_home`` is ``None`` when the variable is unset; the new lookup uses it whenever it is *set*
    (``os.LookupEnv``), the old storage.conf lookup only when it is non-empty.
    """

    home: str
    uid: int
    xdg_config_home: str | None = None
    xdg_data_home: str | None = None
    containers_policy_json: str | None = None
    containers_storage_conf: str | None = None
    storage_driver: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, uid: int, passwd_home: str = "") -> UserEnv:
        """Build from an environment mapping as containers/storage reads it (``HOME`` wins over the passwd entry)."""
        return cls(home=environ.get("HOME") or passwd_home, uid=uid, xdg_config_home=environ.get("XDG_CONFIG_HOME"),
                   xdg_data_home=environ.get("XDG_DATA_HOME") or None,
                   containers_policy_json=environ.get("CONTAINERS_POLICY_JSON") or None,
                   containers_storage_conf=environ.get("CONTAINERS_STORAGE_CONF"),
                   storage_driver=environ.get("STORAGE_DRIVER") or None)

    def config_dir(self) -> str:
        """``configfile.UserConfigPath``: ``$XDG_CONFIG_HOME/containers`` if set, else ``$HOME/.config/containers``."""
        if self.xdg_config_home is not None:
            return posixpath.join(self.xdg_config_home, "containers")
        return posixpath.join(self.home, ".config", "containers")

    def data_home(self) -> str:
        """``homedir.GetDataHome``: ``$XDG_DATA_HOME``, else ``$HOME/.local/share``."""
        return self.xdg_data_home or posixpath.join(self.home, ".local", "share")


@dataclass(frozen=True)
class Candidate:
    """One place a tool may read: ``path``, ``kind`` (file/dir), ``role`` (override/user/admin/vendor/…) and the
    source ``rule`` it was read from. ``exclusive`` means: if it exists, nothing after it is read."""

    path: str
    kind: Literal["file", "dir"]
    role: str
    rule: str
    exclusive: bool = True
    must_exist: bool = False


def _rooted(root: str | None, path: str) -> str:
    """``RootForImplicitAbsolutePaths``: prefixes built-in absolute paths only, never $HOME/XDG/env paths."""
    return posixpath.join(root, path.lstrip("/")) if root else path


def policy_json_candidates(env: UserEnv, generation: Generation, *, root: str | None = None,
                           override: str | None = None) -> list[Candidate]:
    """policy.json candidates in the order a tool tries them; the first that exists is the only file read.

    ``override`` is ``SignaturePolicyPath`` (skopeo ``--policy``, podman ``--signature-policy``, CRI-O
    ``signature_policy``): alone, and it must exist. In the old generation the system file is used without an
    existence check (a missing one is the read error), so it is marked ``must_exist``.
    """
    if override:
        return [Candidate(override, "file", "override", "SystemContext.SignaturePolicyPath", must_exist=True)]
    if generation == "old":
        return [
            Candidate(posixpath.join(env.home, ".config/containers/policy.json"), "file", "user", _OLD_POLICY),
            Candidate(_rooted(root, "/etc/containers/policy.json"), "file", "admin", _OLD_POLICY, must_exist=True),
        ]
    if env.containers_policy_json:
        return [Candidate(env.containers_policy_json, "file", "environment", _NEW_POLICY + " ($CONTAINERS_POLICY_JSON)",
                          must_exist=True)]
    return [
        Candidate(posixpath.join(env.config_dir(), "policy.json"), "file", "user", _NEW_POLICY),
        Candidate(_rooted(root, "/etc/containers/policy.json"), "file", "admin", _NEW_POLICY),
        Candidate(_rooted(root, "/usr/share/containers/policy.json"), "file", "vendor", _NEW_POLICY),
    ]


def _special_dropins(main: str, suffix: str, uid: int, rule: str, role: str) -> list[Candidate]:
    """``getDropInPathsUnderMain``: ``<main-suffix>.rootless|rootful<suffix>.d`` (+ ``/<uid>``), then ``<main>.d``."""
    special = "rootless" if uid > 0 else "rootful"
    prefix = main[: -len(suffix)] if suffix and main.endswith(suffix) else main
    special_path = f"{prefix}.{special}{suffix if suffix and main.endswith(suffix) else ''}.d"
    out: list[Candidate] = []
    if uid > 0:
        out.append(Candidate(posixpath.join(special_path, str(uid)), "dir", f"{role} rootless uid", rule, False))
    out.append(Candidate(special_path, "dir", f"{role} {special}", rule, False))
    out.append(Candidate(main + ".d", "dir", role, rule, False))
    return out


def registries_d_candidates(env: UserEnv, generation: Generation, *, root: str | None = None,
                            override: str | None = None) -> list[Candidate]:
    """registries.d directories, highest priority first.

    Old: the first *existing* directory is the only one read (``exclusive``). New: every existing directory
    contributes ``*.yaml`` files, merged by name (see :func:`merge_dropins`). ``override`` is
    ``RegistriesDirPath`` (skopeo ``--registries.d``): the only directory in both generations.
    """
    if override:
        return [Candidate(override, "dir", "override", "SystemContext.RegistriesDirPath")]
    if generation == "old":
        return [
            Candidate(posixpath.join(env.home, ".config/containers/registries.d"), "dir", "user", _OLD_REGD),
            Candidate(_rooted(root, "/etc/containers/registries.d"), "dir", "admin", _OLD_REGD),
        ]
    out = [Candidate(posixpath.join(env.config_dir(), "registries.d"), "dir", "user", _NEW_REGD, False)]
    out += _special_dropins(_rooted(root, "/etc/containers/registries"), "", env.uid, _NEW_REGD, "admin")
    out += _special_dropins(_rooted(root, "/usr/share/containers/registries"), "", env.uid, _NEW_REGD, "vendor")
    return out


def storage_conf_candidates(env: UserEnv, generation: Generation, *, root: str | None = None) -> list[Candidate]:
    """storage.conf main files in order; the first that exists is used (drop-ins of the new generation not listed).

    For a rootless user (uid > 0) the user's own file comes first in both generations; in the old one the system
    files then only provide ``rootless_storage_path`` and a rootless-capable ``driver`` (``getRootlessStorageOpts``).
    """
    if env.containers_storage_conf is not None:
        rule = (_OLD_STORAGE if generation == "old" else _NEW_STORAGE) + " ($CONTAINERS_STORAGE_CONF)"
        return [Candidate(env.containers_storage_conf, "file", "environment", rule, must_exist=generation == "new")]
    if generation == "old":
        out: list[Candidate] = []
        if env.uid > 0:
            user = (posixpath.join(env.xdg_config_home, "containers/storage.conf") if env.xdg_config_home
                    else posixpath.join(env.home, ".config/containers/storage.conf"))
            out.append(Candidate(user, "file", "user", _OLD_STORAGE))
        elif env.xdg_config_home:
            out.append(Candidate(posixpath.join(env.xdg_config_home, "containers/storage.conf"), "file", "user",
                                 _OLD_STORAGE))
        out.append(Candidate(_rooted(root, "/etc/containers/storage.conf"), "file", "admin", _OLD_STORAGE))
        out.append(Candidate(_rooted(root, "/usr/share/containers/storage.conf"), "file", "vendor", _OLD_STORAGE))
        return out
    return [
        Candidate(posixpath.join(env.config_dir(), "storage.conf"), "file", "user", _NEW_STORAGE),
        Candidate(_rooted(root, "/etc/containers/storage.conf"), "file", "admin", _NEW_STORAGE),
        Candidate(_rooted(root, "/usr/share/containers/storage.conf"), "file", "vendor", _NEW_STORAGE),
    ]


def first_existing(candidates: Iterable[Candidate], exists: Callable[[str], bool]) -> Candidate | None:
    """The candidate a tool uses: the first that exists, or the first ``must_exist`` one (its absence is the
    tool's read error, which the caller reports), or None when nothing is configured."""
    for cand in candidates:
        if cand.must_exist or exists(cand.path):
            return cand
    return None


def shadowed(candidates: Iterable[Candidate], exists: Callable[[str], bool]) -> list[Candidate]:
    """Candidates that exist but are not read because an earlier one won (for ``show``/``explain`` to warn, e.g.
    "~/.config/containers/policy.json hides /etc/containers/policy.json"). Only for exclusive lookups."""
    cands = list(candidates)
    chosen = first_existing(cands, exists)
    if chosen is None:
        return []
    after = cands[cands.index(chosen) + 1:]
    return [c for c in after if c.exclusive and exists(c.path)]


def hidden_dropins(listing: Iterable[tuple[Candidate, Iterable[str]]], suffix: str = ".yaml") -> list[tuple[str, str]]:
    """(hidden file, file that hides it) for every drop-in overridden by a same-named file of higher priority."""
    winner: dict[str, str] = {}
    hidden: list[tuple[str, str]] = []
    for cand, names in listing:
        for name in sorted(names):
            if not name.endswith(suffix) or "/" in name:
                continue
            path = posixpath.join(cand.path, name)
            if name in winner:
                hidden.append((path, winner[name]))
            else:
                winner[name] = path
    return hidden


def merge_dropins(listing: Iterable[tuple[Candidate, Iterable[str]]], suffix: str = ".yaml") -> list[str]:
    """``readDropInsFromPaths``: given (directory, its entry names) highest priority first, the files read, in order.

    A name in a higher-priority directory hides the same name below it; the survivors are read sorted by name.
    Entries are file names only (the caller lists regular files; subdirectories are skipped as configfile does).
    """
    chosen: dict[str, str] = {}
    for cand, names in reversed(list(listing)):
        for name in names:
            if name.endswith(suffix) and "/" not in name:
                chosen[name] = posixpath.join(cand.path, name)
    return [chosen[name] for name in sorted(chosen)]


def registries_d_files(env: UserEnv, generation: Generation, listdir: Callable[[str], list[str] | None], *,
                       root: str | None = None, override: str | None = None) -> list[str]:
    """The registries.d files a tool reads, in order. ``listdir(path)`` returns the regular-file names of an
    existing directory, or None when it does not exist."""
    cands = registries_d_candidates(env, generation, root=root, override=override)
    if generation == "old" or override:
        for cand in cands:
            names = listdir(cand.path)
            if names is not None:
                return [posixpath.join(cand.path, n) for n in sorted(names) if n.endswith(".yaml")]
        return []
    listing = [(c, names) for c in cands if (names := listdir(c.path)) is not None]
    return merge_dropins(listing)



# ---- which generation a binary was built with -----------------------------------------------------------------

#: ``go.podman.io/image/v5`` pseudo-version of the podman c6580b4a vendor, the first build read with the new lookup.
_NEW_PSEUDO_FROM = "20260515151312"
_C_IMAGE_MODULES = (b"go.podman.io/image/v5", b"github.com/containers/image/v5")
_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def c_image_from_buildinfo(data: bytes) -> tuple[str, str] | None:
    """(module path, version) of containers/image in a Go binary's build information, or None.

    Go (``debug/buildinfo``) writes a ``\\xff Go buildinf:`` header and, for module builds, a ``modinfo`` text
    whose ``dep\\t<path>\\t<version>`` lines name every dependency (a ``=>`` line after one is its replacement).
    Distribution builds in GOPATH mode (Debian's skopeo and podman) carry no module list: None.
    """
    at = data.find(_BUILDINFO_MAGIC)
    if at < 0:
        return None
    blob = data[at: at + 256 * 1024]
    found: tuple[str, str] | None = None
    for line in blob.split(b"\n"):
        parts = line.split(b"\t")
        if len(parts) >= 3 and parts[0] == b"dep" and parts[1] in _C_IMAGE_MODULES:
            found = (parts[1].decode(), parts[2].decode("ascii", "replace"))
        elif found is not None and len(parts) >= 3 and parts[0] == b"=>":
            found = (found[0], parts[2].decode("ascii", "replace"))
    return found


def generation_for_module(module: str, version: str) -> Generation:
    """The lookup generation of a containers/image module version as Go records it (``v5.39.3-0.2026…-hash``
    pseudo-versions included): a pseudo-version at or after the first known new build is ``new``, anything
    else goes by its release number (:func:`generation_for_c_image`)."""
    core = version.removeprefix("v")
    pieces = core.split("-")
    if len(pieces) >= 3 and "." in pieces[1]:
        stamp = pieces[1].rsplit(".", 1)[-1]
        if stamp.isdigit() and len(stamp) == 14 and stamp >= _NEW_PSEUDO_FROM:
            return "new"
    return generation_for_c_image(core)
