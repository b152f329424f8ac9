"""Which policy.json and registries.d files a node's containers/image really reads (issue 14 item 4).

``policy show``, ``policy explain`` and ``audit`` must judge the files a pull on the node reads, not the ones an
administrator expects: a user's ``~/.config/containers/policy.json`` replaces ``/etc/containers/policy.json``
for that user, an existing ``~/.config/containers/registries.d`` hides ``/etc/containers/registries.d`` entirely
(released containers/image), and the Podman 6 line merges registries.d drop-ins from up to eight directories.
The order itself is :mod:`atomicsig.format.containers_paths` (read from the Go sources); this module applies it
to a real tree and says what won and what was shadowed.

Whose view (``user``):

* ``--root /`` and no user: this process, as podman started here would look (``$HOME`` else the passwd entry,
  ``$XDG_CONFIG_HOME``, ``$CONTAINERS_POLICY_JSON``, the effective uid).
* a user name or uid: that user as podman started from a login shell would look (home and uid from the node's
  passwd, no ``XDG_*``/``CONTAINERS_*`` variables: those belong to a session we cannot see).
* ``--root DIR`` (a node's tree mounted elsewhere) and no user: root of that node (uid 0, its home from
  ``DIR/etc/passwd``). Every path of the node, homes included, is read under ``DIR``; this process's environment
  is not consulted (it is not the node's).

Which generation: ``auto`` reads the Go build information of the node's podman, skopeo, crio or buildah
(:func:`installed_generation`); a build without a module list (distribution builds in GOPATH mode, e.g. Debian's)
is a released containers/image, i.e. ``old`` — every release up to 5.39 reads that way.

Errors: a broken file is an :class:`InputError` naming it (exit 2); a file or directory that exists but cannot be
read is a :class:`StorageError` (exit 3: the configuration may be fine, we could not check it).
"""

from __future__ import annotations

import mmap
import os
import pwd
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import InputError, PolicyError, StorageError
from atomicsig.format import containers_paths as cpaths
from atomicsig.format import policyjson, yamlstrict
from atomicsig.fsutil import UnsafeFileError, open_dir_beneath, read_regular_file, read_regular_nonblocking
from atomicsig.store import registries_d

#: Binaries whose containers/image decides pulls on a node, in the order their build information is consulted.
NODE_BINARIES = ("usr/bin/podman", "usr/bin/skopeo", "usr/bin/crio", "usr/bin/buildah")
#: The files ``policy apply`` writes (so a preview overlays exactly these, see :func:`locate` ``overlay``).
_APPLIED = ("/etc/containers/policy.json", "/etc/containers/registries.d")


@dataclass(frozen=True)
class Generation:
    """The lookup generation in force and why (which binary, which module version, or an assumption)."""

    name: cpaths.Generation
    reason: str


def installed_generation(root: str | os.PathLike[str] = "/") -> Generation:
    """The containers/image lookup generation of the tools installed under ``root`` (see module docstring)."""
    rootp = Path(root)
    seen: list[str] = []
    for rel in NODE_BINARIES:
        path = rootp / rel
        try:
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                at = data.find(b"\xff Go buildinf:")  # only the build information is copied out of the binary
                found = cpaths.c_image_from_buildinfo(data[at: at + 256 * 1024]) if at >= 0 else None
        except (OSError, ValueError):
            continue
        if found is None:
            seen.append(str(path))
            continue
        module, version = found
        gen = cpaths.generation_for_module(module, version)
        return Generation(gen, f"{path} is built with {module} {version}")
    if seen:
        return Generation("old", f"{seen[0]} records no module versions (a distribution build); every released "
                                 "containers/image (up to 5.39) uses this lookup")
    return Generation("old", "no podman, skopeo, crio or buildah found; assuming a released containers/image")


@dataclass(frozen=True)
class Viewer:
    """Whose lookup: the environment as containers/image reads it and a label for humans."""

    env: cpaths.UserEnv
    label: str


def _passwd_entry(root: Path | None, user: str) -> tuple[int, str, str]:
    """(uid, home, name) of ``user`` (a name or a uid) in the node's passwd (``root/etc/passwd``) or this host's."""
    if root is None:
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if user.isdigit():  # a uid without an entry: containers/storage then uses $HOME, which we do not have
                raise InputError(f"--user {user}: no passwd entry, so no home directory to look in") from None
            raise InputError(f"--user {user}: no such user") from None
        return pw.pw_uid, pw.pw_dir, pw.pw_name
    passwd = root / "etc/passwd"
    try:
        lines = passwd.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        raise StorageError(f"cannot read {passwd}: {exc.strerror or exc}") from None
    for line in lines:
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and (f[0] == user or f[2] == user):
            return int(f[2]), f[5] or "/", f[0]
    if user in ("root", "0"):
        return 0, "/root", "root"
    raise InputError(f"--user {user}: not in {passwd}")


def viewer(root: str | os.PathLike[str] = "/", user: str | None = None,
           environ: Mapping[str, str] | None = None) -> Viewer:
    """Whose lookup to reproduce (see module docstring)."""
    rootp = Path(root).absolute()
    foreign = str(rootp) != "/"
    if user is None and not foreign:
        environ = os.environ if environ is None else environ
        uid = os.geteuid()
        try:
            passwd_home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            passwd_home = ""
        env = cpaths.UserEnv.from_environ(environ, uid=uid, passwd_home=passwd_home)
        return Viewer(env, f"this process (uid {uid}, HOME {env.home})")
    uid, home, name = _passwd_entry(rootp if foreign else None, user or "root")
    return Viewer(cpaths.UserEnv(home=home, uid=uid), f"{name} (uid {uid}, home {home})")


@dataclass
class NodeFiles:
    """What a pull reads: the policy.json (``policy_path``, the real file), the registries.d files in the order
    they are merged and their merged configuration, plus everything found but not read (``warnings``)."""

    generation: Generation
    viewer: Viewer
    policy_path: Path
    policy_role: str
    policy: dict[str, Any]
    registries_dirs: list[Path]
    registries_files: list[Path]
    registries: registries_d.RegistriesConfig
    shadowed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    policy_raw: bytes = b""  # the bytes read, for positions in error messages

    def policy_problem(self) -> str | None:
        """The one-line reason containers/image refuses this policy.json (``file:line:col: …``), or None."""
        problems = policyjson.problems(self.policy)
        if not problems:
            return None
        pos = policyjson.problem_position(self.policy_raw, problems[0]) if self.policy_raw else None
        where = f"{self.policy_path}:{pos[0]}:{pos[1]}" if pos else str(self.policy_path)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return f"{where}: {problems[0]}{more}; containers/image refuses the whole file, so every pull fails"

    def describe(self) -> dict[str, Any]:
        """The JSON block every command prints (``lookup``)."""
        return {"generation": self.generation.name, "why": self.generation.reason, "user": self.viewer.label,
                "policy": str(self.policy_path), "policy_role": self.policy_role,
                "registries_d": [str(d) for d in self.registries_dirs],
                "registries_d_files": [str(f) for f in self.registries_files], "shadowed": self.shadowed}


def _mapper(rootp: Path, foreign: bool, overlay: Path | None) -> Callable[[str], Path]:
    """Node path → the file to read: under ``overlay`` for what ``policy apply`` writes, else under the root."""
    def real(node_path: str) -> Path:
        if overlay is not None and any(node_path == a or node_path.startswith(a + "/") for a in _APPLIED):
            return overlay / node_path.lstrip("/")
        return rootp / node_path.lstrip("/") if foreign else Path(node_path)
    return real


#: a policy.json or registries.d file larger than this is refused when read from another user's home
MAX_USER_FILE = 4 * 1024 * 1024


def _beneath(confine: Path | None, path: Path) -> str | None:
    """``path`` relative to ``confine`` (another user's home, read on their behalf) if it lies under it."""
    if confine is None:
        return None
    try:
        rel = path.relative_to(confine)
    except ValueError:
        return None
    return str(rel) if str(rel) != "." else None


def _refused(path: Path, exc: UnsafeFileError) -> StorageError:
    """The reason with the full path (fsutil names the path relative to the home it read beneath)."""
    return StorageError(f"refusing to read {path} for that user: {exc.message.rsplit(': ', 1)[-1]}")


def _yaml_names(directory: Path, *, regular_only: bool, confine: Path | None = None) -> list[str] | None:
    """``*.yaml`` names in ``directory`` sorted, or None if it does not exist. The old lookup reads every such
    name (a directory named ``x.yaml`` is then a read error, as in c/image); the new one skips non-files.
    Under ``confine`` no symlink is followed (see :func:`locate`)."""
    try:
        rel = _beneath(confine, directory)
        if rel is not None and confine is not None:
            fd = open_dir_beneath(confine, rel)
            try:
                listed = os.listdir(fd)
            finally:
                os.close(fd)
        else:
            listed = os.listdir(directory)
        names = sorted(n for n in listed if n.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnsafeFileError as exc:
        raise _refused(directory, exc) from None
    except OSError as exc:
        raise StorageError(f"cannot list {directory}: {exc.strerror or exc}") from None
    if regular_only:
        names = [n for n in names if _is_regular(directory / n)]
    return names


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _read_text(path: Path, confine: Path | None = None) -> str | None:
    """A registries.d file's text; None if it vanished since the listing (c/image skips it too). Opened without
    blocking and only if regular: a FIFO named ``x.yaml`` must not hang the audit."""
    rel = _beneath(confine, path)
    if rel is not None and confine is not None:
        try:
            return _utf8(read_regular_file(confine, rel, MAX_USER_FILE), path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except UnsafeFileError as exc:
            raise _refused(path, exc) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = read_regular_nonblocking(path)
    if data is None:
        return None
    return _utf8(data, path)


def _utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"parsing {path}: not UTF-8 text") from None


def locate(root: str | os.PathLike[str] = "/", *, user: str | None = None, generation: str = "auto",
           policy: str | None = None, registries_dir: str | None = None, overlay: str | os.PathLike[str] | None = None,
           environ: Mapping[str, str] | None = None) -> NodeFiles:
    """Find, read and merge the node's policy.json and registries.d as its containers/image does.

    ``policy``/``registries_dir`` are explicit overrides (skopeo ``--policy``/``--registries.d``), read alone.
    ``overlay`` is a scratch root holding the files ``policy apply`` would write (``audit -f``): those node paths
    are read from it, every other one from the node.
    """
    rootp = Path(root).absolute()
    foreign = str(rootp) != "/"
    gen = installed_generation(rootp) if generation == "auto" else Generation(
        generation, "chosen with --lookup")  # type: ignore[arg-type]
    if gen.name not in cpaths.GENERATIONS:
        raise InputError(f"unknown lookup generation {generation!r} (auto, old or new)")
    who = viewer(rootp, user, environ)
    real = _mapper(rootp, foreign, Path(overlay) if overlay is not None else None)
    # Reading another user's files on their behalf (--user, as root): their home is theirs to arrange, so no
    # symlink is followed below it and only regular files are read — a link from ~/.config/containers/policy.json
    # to a file that user cannot read must not make this process read it for them (exit 3 instead).
    confine = real(who.env.home) if user is not None and who.env.uid != os.geteuid() else None
    warnings: list[str] = []
    shadowed: list[str] = []

    # ---- policy.json: one file, the first that exists (SPEC §5.1)
    if policy:
        ppath, role = Path(policy), "given with --policy"
    else:
        cands = cpaths.policy_json_candidates(who.env, gen.name)
        exists = lambda p: real(p).exists()  # noqa: E731  (fileutils.Exists: any kind of file)
        chosen = cpaths.first_existing(cands, exists)
        if chosen is None:
            raise PolicyError("no policy.json file found at any of the following: "
                              + ", ".join(str(real(c.path)) for c in cands))
        ppath, role = real(chosen.path), chosen.role
        for other in cpaths.shadowed(cands, exists):
            shadowed.append(str(real(other.path)))
            if other.role != "vendor":  # /etc over /usr/share is the designed admin override, not a surprise
                warnings.append(f"{real(other.path)} ({other.role}) is not read: {ppath} ({role}) comes first "
                                "and replaces it (policy.json files are never merged)")
    rel = _beneath(confine, ppath)
    if rel is not None and confine is not None:
        try:
            raw = read_regular_file(confine, rel, MAX_USER_FILE)
        except FileNotFoundError:
            raw = None
        except UnsafeFileError as exc:
            raise _refused(ppath, exc) from None
        doc = policyjson.loads(raw, str(ppath)) if raw is not None else None
    else:
        doc, raw = policyjson.read(ppath)
    if doc is None:
        raise PolicyError(f"no policy.json at {ppath}")

    # ---- registries.d: one directory (old) or merged drop-ins (new), SPEC §4.1
    rcands = cpaths.registries_d_candidates(who.env, gen.name)
    if registries_dir:
        rcands = [cpaths.Candidate(registries_dir, "dir", "given with --registries.d", "RegistriesDirPath")]
        real_dir: Callable[[str], Path] = Path
    else:
        real_dir = real
    listing: list[tuple[cpaths.Candidate, list[str]]] = []
    for cand in rcands:
        names = _yaml_names(real_dir(cand.path), regular_only=gen.name == "new", confine=confine)
        if names is not None:
            listing.append((cand, names))
    read_files: list[Path] = []
    unread: list[tuple[Path, str]] = []  # (file, why it is not read)
    if gen.name == "old" or registries_dir:
        if listing:
            first, names = listing[0]
            read_files = [real_dir(first.path) / n for n in names]
            for cand, later in listing[1:]:
                for n in later:
                    unread.append((real_dir(cand.path) / n, f"{real_dir(first.path)} exists and hides "
                                                            f"{real_dir(cand.path)}"))
                if later:
                    warnings.append(f"{real_dir(cand.path)} is not read: {real_dir(first.path)} exists and hides it "
                                    "(this containers/image reads only the first existing registries.d)")
    else:
        read_files = [real(f) for f in cpaths.merge_dropins(listing)]
        for hidden, winner in cpaths.hidden_dropins(listing):
            unread.append((real(hidden), f"{real(winner)} has the same name"))
            warnings.append(f"{real(hidden)} is not read: {real(winner)} has the same name "
                            "and a higher priority")
    config = registries_d.RegistriesConfig(uid=who.env.uid, home=who.env.home)
    for path in read_files:
        text = _read_text(path, confine)
        if text is not None:
            registries_d.merge_file(config, text, str(path))  # same-scope conflicts: c/image's error, exit 2
    warnings += _scope_clashes(config, unread)
    dirs = [real_dir(c.path) for c, _ in listing]
    if gen.name == "old" or registries_dir:
        dirs = dirs[:1] or [real_dir(rcands[-1].path)]
    return NodeFiles(gen, who, ppath, role, doc, dirs, read_files, config, shadowed, warnings, raw or b"")


def _scope_clashes(config: registries_d.RegistriesConfig, unread: list[tuple[Path, str]]) -> list[str]:
    """A warning for each ``docker`` scope (or ``default-docker``) that a file which is *not* read also defines:
    the administrator edited one place, the pull reads the other. Unreadable or broken unread files are skipped
    (they are not read by the pull either, and their own warning is already given)."""
    out: list[str] = []
    for path, why in unread:
        try:
            text = _read_text(path)  # unread files: only for the clash warning; never another user's
            data = yamlstrict.load(text, str(path), PolicyError)[0] if text is not None else None
        except (StorageError, PolicyError):
            continue
        if not isinstance(data, dict):
            continue
        docker = data.get("docker")
        for scope in docker if isinstance(docker, dict) else {}:
            sec = config.docker.get(str(scope))
            if sec is not None:
                out.append(f"docker scope {str(scope)!r} is defined in {sec.source} (read) and in {path} "
                           f"(not read: {why})")
        if data.get("default-docker") is not None and config.default_docker is not None:
            out.append(f"default-docker is defined in {config.default_docker.source} (read) and in {path} "
                       f"(not read: {why})")
    return out
