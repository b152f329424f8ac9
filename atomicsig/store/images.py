"""The images a node holds: containers-storage read as containers/storage reads it, read-only (issue 14 item 1).

What podman and CRI-O hold is recorded by containers/storage (read at tag v1.43.0, what Debian 12's podman 4.3.1
uses, and container-libs ``storage/`` at f0ddf1a7, 2026-04-01 — the on-disk format is the same in both):

* The image store is ``<imagestore or graphroot>/<driver>-images/`` (``store.go`` ``load``: ``driverPrefix +
  "images"``), its index ``images.json`` (``images.go`` ``imagespath``): a JSON array of records with ``id``,
  ``digest``, ``names``, ``big-data-names``, ``big-data-digests``, ``created``, … An empty or absent file is an
  empty store; anything else that does not decode is an error (``load``: "loading %q").
* ``Digests`` is not stored (``json:"-"``): ``recomputeDigests`` builds it from ``digest`` (if set) followed by the
  digest of every big-data item whose name starts with ``manifest`` (``bigDataNameIsManifest``), de-duplicated; an
  unset ``digest`` becomes the first of those. A later image that claims a name takes it from an earlier one.
* Big-data items live in ``<id>/<name>`` where a name outside ``[.0-9a-z]`` is stored as ``"=" +
  base64(name)`` (``store.go`` ``makeBigDataBaseName``). containers/image (``storage/storage_dest.go``
  ``Commit``, ``storage_image.go`` ``manifestBigDataKey``) writes the pulled per-platform manifest as
  ``manifest-<digest>`` and ``manifest``, and — when the pull went through a manifest list — the list itself as
  ``manifest-<list digest>``. So a list digest and the instance digest are both among ``Digests``; which is
  which is read from the manifest bytes.

Where the store is (``types/options.go``, ``types/utils.go``; candidates from
:mod:`atomicsig.format.containers_paths`): root uses ``graphroot`` from storage.conf, default
``/var/lib/containers/storage``; a rootless user their own storage.conf if present, else the system file's
``rootless_storage_path`` or ``$XDG_DATA_HOME/containers/storage`` (``~/.local/share/containers/storage``).
``$UID`` and environment variables in paths are expanded (``expandEnvPath``). The driver is ``STORAGE_DRIVER``,
else the configured one, else (as ``drivers.New`` guesses a prior driver) the one whose store already exists,
non-``vfs`` drivers first in c/storage's priority order.

Read-only and safe against a hostile store (a root audit may read a user's storage): no lock is taken (podman
writes images.json by rename, so a read sees the old or the new file, never half of one), every file is opened
beneath the store without following symlinks, non-regular files are refused and sizes are bounded. Never a
subprocess. A broken index or storage.conf is an :class:`InputError` naming the file (exit 2); a store that cannot
be read (permissions, symlinks, oversize) a :class:`StorageError` (exit 3). A problem with one image's manifest is
recorded on that image (``problems``) so the other images are still reported.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import InputError, StorageError
from atomicsig.format import containers_paths as cpaths
from atomicsig.format.manifest import LIST_TYPES, MAX_MANIFEST_SIZE, guess_media_type
from atomicsig.format.manifest import digest as manifest_digest
from atomicsig.format.reference import Reference, parse, validate_digest
from atomicsig.fsutil import UnsafeFileError, open_dir_beneath, read_regular_file

#: images.json of a node with thousands of images is a few MiB; refuse to load anything absurd into memory.
MAX_IMAGES_JSON = 64 * 1024 * 1024
MAX_STORAGE_CONF = 1024 * 1024
DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
#: c/storage ``drivers/driver_linux.go`` ``priority`` (devicemapper last: only used when configured).
DRIVER_PRIORITY = ("overlay", "aufs", "btrfs", "zfs", "vfs", "devicemapper")
#: ``isRootlessDriver``: system drivers a rootless user inherits.
ROOTLESS_DRIVERS = frozenset({"btrfs", "overlay", "overlay2", "vfs"})
_DRIVER_RE = re.compile(r"^[a-z0-9]+\Z")
_BIGDATA_PLAIN = re.compile(r"^[.0-9a-z]*\Z")
_ENV_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class StorageLocation:
    """Which store: ``graphroot``, ``driver`` (None: no store exists yet), the directory holding
    ``<driver>-images`` (``imagestore`` or graphroot), the storage.conf used and why the driver was chosen."""

    graphroot: str
    driver: str | None
    image_root: str
    rootless: bool
    config_file: str | None = None
    driver_source: str = "configured"

    @property
    def images_dir(self) -> str | None:
        return os.path.join(self.image_root, f"{self.driver}-images") if self.driver else None


@dataclass(frozen=True)
class StoredManifest:
    """One manifest big-data item: its key (``manifest`` or ``manifest-<digest>``), digest as recorded, and type."""

    key: str
    digest: str
    media_type: str

    @property
    def is_list(self) -> bool:
        return self.media_type in LIST_TYPES


@dataclass(frozen=True)
class StoredImage:
    """One image record, with everything an audit needs to evaluate it as the node would.

    ``digest``/``digests`` are containers/storage's (``recomputeDigests``); ``manifest_digest`` is the digest of the
    per-platform manifest the node runs (the ``manifest`` item, which c/image also writes for single images);
    ``list_digests`` the manifest lists it was pulled through. ``names`` are as stored; ``references`` the ones
    that parse as normalized references (tagged or digested).
    """

    id: str
    names: tuple[str, ...]
    references: tuple[Reference, ...]
    digest: str | None
    digests: tuple[str, ...]
    manifest_digest: str | None
    list_digests: tuple[str, ...]
    manifests: tuple[StoredManifest, ...]
    driver: str
    graphroot: str
    created: str | None = None
    problems: tuple[str, ...] = ()
    #: big-data keys holding the signatures c/image copied in at pull time (``signature-<instance hex>``, or
    #: ``signatures`` from older writers; ``storage_dest.go`` ``Commit``) — names only, not read here.
    signature_keys: tuple[str, ...] = ()

    @property
    def tags(self) -> tuple[Reference, ...]:
        return tuple(r for r in self.references if r.tag is not None)

    def repo_digests(self) -> list[str]:
        """``name@digest`` for every repository the image is named in × every manifest digest (podman's
        ``RepoDigests``, c/common ``libimage`` ``Image.RepoDigests``), de-duplicated, in order."""
        out: list[str] = []
        for ref in self.references:
            for dig in self.digests:
                item = f"{ref.name}@{dig}"
                if item not in out:
                    out.append(item)
        return out


@dataclass
class _Conf:
    path: str | None = None
    role: str = ""
    driver: str = ""
    graphroot: str = ""
    rootless_storage_path: str = ""
    imagestore: str = ""


# ---- storage.conf -------------------------------------------------------------------------------------------------


def _read_config(path: str) -> bytes | None:
    """A configuration file's bytes, or None if absent. Follows symlinks (an administrator's choice, as c/storage
    does), but refuses FIFOs/devices and anything over :data:`MAX_STORAGE_CONF`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return None
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"cannot read {path}: not a regular file")
        data = os.read(fd, MAX_STORAGE_CONF + 1)
        if len(data) > MAX_STORAGE_CONF:
            raise StorageError(f"cannot read {path}: larger than {MAX_STORAGE_CONF} bytes")
        return data
    finally:
        os.close(fd)


def _parse_conf(path: str, role: str, data: bytes) -> _Conf:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: invalid storage.conf: {exc}") from None
    section = doc.get("storage", {})
    if not isinstance(section, dict):
        raise InputError(f"{path}: [storage] must be a table")
    conf = _Conf(path=path, role=role)
    for key in ("driver", "graphroot", "rootless_storage_path", "imagestore"):
        value = section.get(key, "")
        if not isinstance(value, str):
            raise InputError(f"{path}: storage.{key} must be a string")
        setattr(conf, key, value)
    return conf


def expand_path(path: str, environ: Mapping[str, str], uid: int) -> str:
    """``expandEnvPath``: ``$UID`` → uid, then ``$VAR``/``${VAR}`` from the environment (unset → empty), cleaned."""
    path = path.replace("$UID", str(uid))
    path = _ENV_RE.sub(lambda m: environ.get(m.group(1) or m.group(2) or "", ""), path)
    return os.path.normpath(path) if path else path


def _rooted(root: str | None, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root and os.path.isabs(path) else path


def _normalize_driver(name: str) -> str:
    return "overlay" if name == "overlay2" else name


def locate_storage(environ: Mapping[str, str], *, uid: int, passwd_home: str = "", root: str | None = None,
                   generation: cpaths.Generation = "old", graphroot: str | None = None,
                   driver: str | None = None) -> StorageLocation:
    """Where containers/storage keeps images for this user, as podman would compute it (see module docstring).

    ``graphroot``/``driver`` given explicitly (``podman --root``/``--storage-driver``) win over storage.conf;
    ``root`` is an alternate root for built-in absolute paths and absolute graphroots (auditing a mounted node).
    """
    env = cpaths.UserEnv.from_environ(environ, uid=uid, passwd_home=passwd_home)
    rootless = uid != 0
    conf = _Conf()
    for cand in cpaths.storage_conf_candidates(env, generation, root=root):
        data = _read_config(cand.path)
        if data is None:
            if cand.must_exist:
                raise InputError(f"storage.conf {cand.path} does not exist ({cand.rule})")
            continue
        conf = _parse_conf(cand.path, cand.role, data)
        break
    # getRootlessStorageOpts (old): without their own file, a user gets only rootless_storage_path and a
    # rootless-capable driver from the system file, never its graphroot.
    inherited = rootless and generation == "old" and conf.role not in ("user", "environment")
    default_rootless = os.path.join(env.data_home(), "containers", "storage")
    # paths in a file found under ``root`` name places on that node; a user's or $CONTAINERS_STORAGE_CONF file
    # (like $HOME itself) names places on this machine, as RootForImplicitAbsolutePaths leaves those alone.
    conf_root = root if conf.role in ("admin", "vendor") else None
    if graphroot is not None:
        if not os.path.isdir(graphroot):
            raise InputError(f"no containers-storage at {graphroot}: not a directory")
        chosen_root = graphroot
    elif inherited:
        chosen_root = (expand_path(conf.rootless_storage_path, environ, uid) if conf.rootless_storage_path
                       else default_rootless)
    elif conf.graphroot:
        chosen_root = _rooted(conf_root, expand_path(conf.graphroot, environ, uid))
    elif rootless and conf.rootless_storage_path:
        chosen_root = expand_path(conf.rootless_storage_path, environ, uid)
    elif rootless:
        chosen_root = default_rootless
    else:
        chosen_root = _rooted(root, DEFAULT_GRAPHROOT)
    image_root = _rooted(conf_root, expand_path(conf.imagestore, environ, uid)) if conf.imagestore else chosen_root

    chosen_driver: str | None
    if driver:
        chosen_driver, source = driver, "explicit"
    elif env.storage_driver:
        chosen_driver, source = env.storage_driver, "STORAGE_DRIVER"
    elif conf.driver and (not inherited or conf.driver in ROOTLESS_DRIVERS):
        chosen_driver, source = conf.driver, f"storage.conf {conf.path}"
    else:
        chosen_driver, source = _detect_driver(image_root), "detected from existing store"
        if chosen_driver is None and inherited:
            chosen_driver, source = "vfs", "rootless default"  # getRootlessStorageOpts: empty driver → vfs
    if chosen_driver is not None:
        chosen_driver = _normalize_driver(chosen_driver)
        if not _DRIVER_RE.match(chosen_driver):
            raise InputError(f"invalid storage driver name {chosen_driver!r}")
    return StorageLocation(graphroot=chosen_root, driver=chosen_driver, image_root=image_root, rootless=rootless,
                           config_file=conf.path, driver_source=source)


def _detect_driver(image_root: str) -> str | None:
    """``drivers.New`` with no name: a driver with prior state wins, non-vfs ones first in priority order."""
    try:
        entries = set(os.listdir(image_root))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot list {image_root}: {exc.strerror}") from None
    found = [d for d in DRIVER_PRIORITY if f"{d}-images" in entries]
    for name in found:
        if name != "vfs":
            return name
    return found[0] if found else None


# ---- images.json --------------------------------------------------------------------------------------------------


def bigdata_filename(key: str) -> str:
    """``makeBigDataBaseName``: the key itself if it is only ``[.0-9a-z]``, else ``"=" + base64(key)``."""
    if _BIGDATA_PLAIN.match(key):
        return key
    return "=" + base64.b64encode(key.encode("utf-8")).decode("ascii")


def _digest_or_none(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return validate_digest(value)
    except InputError:
        return None


def parse_images_json(data: bytes, shown: str) -> list[dict[str, Any]]:
    """The records of an images.json (empty bytes = empty store); each checked for the fields we rely on."""
    if not data.strip():
        return []
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{shown}: not valid JSON ({type(exc).__name__}); the image store is damaged") from None
    if not isinstance(doc, list):
        raise InputError(f"{shown}: expected a JSON array of images")
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(doc):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not rec["id"]:
            raise InputError(f"{shown}: image #{i} has no id")
        for key, kind in (("names", list), ("big-data-names", list), ("big-data-digests", dict),
                          ("names-history", list)):
            if rec.get(key) is not None and not isinstance(rec[key], kind):
                raise InputError(f"{shown}: image {rec['id']}: {key!r} has the wrong type")
        # Go decodes these into []string / map[string]digest.Digest: any other element type fails the whole load
        for key in ("names", "big-data-names", "names-history"):
            if not all(isinstance(n, str) for n in rec.get(key) or ()):
                raise InputError(f"{shown}: image {rec['id']}: {key!r} must hold strings")
        if not all(isinstance(v, str) for v in (rec.get("big-data-digests") or {}).values()):
            raise InputError(f"{shown}: image {rec['id']}: 'big-data-digests' must map names to digests")
        digest = rec.get("digest")
        if digest not in (None, "") and _digest_or_none(digest) is None:
            raise InputError(f"{shown}: image {rec['id']}: invalid digest {digest!r}")
        for name, dig in (rec.get("big-data-digests") or {}).items():
            if name.startswith("manifest") and _digest_or_none(dig) is None:
                raise InputError(f"{shown}: image {rec['id']}: invalid digest for {name!r}")
        out.append(rec)
    return out


def _recompute_digests(rec: dict[str, Any]) -> tuple[str | None, list[str]]:
    """``recomputeDigests``: ``digest`` first, then manifest big-data digests, de-duplicated.

    Go iterates the map in random order; we take the big-data items in ``big-data-names`` order (the order they
    were written) so the result is stable, which only matters when ``digest`` is unset."""
    digests: list[str] = []
    digest = _digest_or_none(rec.get("digest"))
    if digest:
        digests.append(digest)
    bdd: dict[str, str] = rec.get("big-data-digests") or {}
    order = [n for n in (rec.get("big-data-names") or []) if n in bdd] + sorted(set(bdd) - set(rec.get(
        "big-data-names") or []))
    for name in order:
        if name.startswith("manifest"):
            dig = bdd[name]
            if dig not in digests:
                digests.append(dig)
    return (digest or (digests[0] if digests else None)), digests


def _safe_component(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _read_manifests(images_fd: int, rec: dict[str, Any], shown: str) -> tuple[list[StoredManifest], list[str]]:
    problems: list[str] = []
    manifests: list[StoredManifest] = []
    image_id = rec["id"]
    bdd: dict[str, str] = rec.get("big-data-digests") or {}
    names = [n for n in (rec.get("big-data-names") or []) if isinstance(n, str) and n.startswith("manifest")]
    if not _safe_component(image_id):
        return [], [f"image id {image_id!r} is not a safe directory name; manifests not read"]
    for key in names:
        fname = bigdata_filename(key)
        if not _safe_component(fname):
            problems.append(f"{key}: stored name {fname!r} is not a plain file name")
            continue
        try:
            data = read_regular_file(images_fd, f"{image_id}/{fname}", MAX_MANIFEST_SIZE)
        except UnsafeFileError as exc:
            problems.append(f"{key}: {exc.message}")
            continue
        except FileNotFoundError:
            problems.append(f"{key}: {shown}/{image_id}/{fname} is missing")
            continue
        except OSError as exc:
            problems.append(f"{key}: cannot read {shown}/{image_id}/{fname}: {exc.strerror}")
            continue
        try:
            media_type = guess_media_type(data)
        except InputError as exc:
            problems.append(f"{key}: {exc.message}")
            continue
        except RecursionError:
            problems.append(f"{key}: manifest nested too deeply")
            continue
        recorded = bdd.get(key)
        if recorded is None:
            problems.append(f"{key}: no digest recorded in images.json")
            continue
        # c/storage records the c/image manifest digest of the bytes (SetImageBigData with manifest.Digest): bytes
        # that no longer match were changed behind podman's back, and the recorded digest would misdescribe them.
        if recorded.startswith("sha256:") and manifest_digest(data) != recorded:
            problems.append(f"{key}: stored manifest does not match its recorded digest {recorded}")
            continue
        manifests.append(StoredManifest(key=key, digest=recorded, media_type=media_type))
    return manifests, problems


def read_images(location: StorageLocation, *, limit: int = MAX_IMAGES_JSON) -> list[StoredImage]:
    """Every image in the store at ``location``, in images.json order. An absent store is an empty list."""
    if location.driver is None:
        return []
    images_rel = f"{location.driver}-images"
    shown = os.path.join(location.image_root, images_rel)
    try:
        images_fd = open_dir_beneath(location.image_root, images_rel)
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing pulled yet with this driver
    except UnsafeFileError as exc:
        raise StorageError(f"refusing to read the image store {shown}: {exc.message}") from None
    except OSError as exc:
        raise StorageError(f"cannot open the image store {shown}: {exc.strerror}") from None
    try:
        try:
            data = read_regular_file(images_fd, "images.json", limit)
        except FileNotFoundError:
            return []
        except UnsafeFileError as exc:
            raise StorageError(f"refusing to read {shown}/images.json: {exc.message}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {shown}/images.json: {exc.strerror}") from None
        records = parse_images_json(data, f"{shown}/images.json")
        owner: dict[str, int] = {}
        for i, rec in enumerate(records):
            for name in rec.get("names") or []:
                owner[name] = i  # a later image that claims a name takes it (images.go load)
        out: list[StoredImage] = []
        for i, rec in enumerate(records):
            names = tuple(n for n in (rec.get("names") or []) if owner.get(n) == i)
            out.append(_image(images_fd, rec, names, location, shown))
        return out
    finally:
        os.close(images_fd)


def _image(images_fd: int, rec: dict[str, Any], names: tuple[str, ...], location: StorageLocation,
           shown: str) -> StoredImage:
    problems: list[str] = []
    refs: list[Reference] = []
    for name in names:
        try:
            ref = parse(name)
        except InputError as exc:
            problems.append(f"name {name!r} is not a reference: {exc.message}")
            continue
        if ref.name_only:
            problems.append(f"name {name!r} has neither tag nor digest")
            continue
        refs.append(ref)
    digest, digests = _recompute_digests(rec)
    manifests, mproblems = _read_manifests(images_fd, rec, shown)
    problems += mproblems
    by_key = {m.key: m for m in manifests}
    main = by_key.get("manifest")
    if main is None:
        singles = [m for m in manifests if not m.is_list]
        main = singles[0] if len(singles) == 1 else None
    lists: list[str] = []
    for m in manifests:
        if m.is_list and m.digest not in lists:
            lists.append(m.digest)
    created = rec.get("created") if isinstance(rec.get("created"), str) else None
    assert location.driver is not None
    return StoredImage(id=rec["id"], names=names, references=tuple(refs), digest=digest, digests=tuple(digests),
                       manifest_digest=main.digest if main else None, list_digests=tuple(lists),
                       manifests=tuple(manifests), driver=location.driver, graphroot=location.graphroot,
                       created=created, problems=tuple(problems),
                       signature_keys=tuple(n for n in (rec.get("big-data-names") or [])
                                            if isinstance(n, str) and n.startswith("signature")))


def node_images(environ: Mapping[str, str] | None = None, *, uid: int | None = None, passwd_home: str = "",
                root: str | None = None, generation: cpaths.Generation = "old", graphroot: str | None = None,
                driver: str | None = None) -> tuple[StorageLocation, list[StoredImage]]:
    """Locate the store for ``uid`` (default: this process) and read it. The one call ``audit`` needs."""
    environ = os.environ if environ is None else environ
    uid = os.geteuid() if uid is None else uid
    loc = locate_storage(environ, uid=uid, passwd_home=passwd_home, root=root, generation=generation,
                         graphroot=graphroot, driver=driver)
    return loc, read_images(loc)
