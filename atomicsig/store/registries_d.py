"""Read ``registries.d`` exactly as containers/image does, and answer "which lookaside for this image?" (SPEC §4).

Pure reading and lookup; writing generated files is the policy compiler's job. Rules reproduced here:

* every ``*.yaml`` in the directory (not ``.yml``), in any order; unknown keys ignored; duplicate keys an error;
* ``default-docker`` in at most one file, each ``docker`` scope in at most one file (error names both files);
* lookup walks the same scope list as policy.json (identity, namespaces, host, ``*.`` wildcards), then
  ``default-docker``, then the built-in default; a section whose chosen URL is empty does not stop the walk;
* write mode prefers ``lookaside-staging`` > ``sigstore-staging`` > ``lookaside`` > ``sigstore``; read mode
  ``lookaside`` > ``sigstore``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import PolicyError
from atomicsig.format import yamlstrict
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import signature_relpath

SYSTEM_DIR = "/etc/containers/registries.d"
BUILTIN_ROOT_DEFAULT = "file:///var/lib/containers/sigstore"
READ_KEYS = ("lookaside", "sigstore")
WRITE_KEYS = ("lookaside-staging", "sigstore-staging", "lookaside", "sigstore")


@dataclass
class Section:
    """One configuration section (``default-docker`` or a ``docker`` scope)."""

    values: dict[str, Any]
    source: str

    def url(self, write: bool) -> str:
        for key in WRITE_KEYS if write else READ_KEYS:
            v = self.values.get(key)
            if isinstance(v, str) and v:
                return v
        return ""


@dataclass
class RegistriesConfig:
    default_docker: Section | None = None
    docker: dict[str, Section] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: whose built-in default applies (``builtinDefaultLookasideStorageDir``: euid 0 → /var/lib/…, else the home's
    #: ~/.local/share/…); None = this process. Set by :mod:`atomicsig.store.nodefiles` for ``--user``/``--root``.
    uid: int | None = None
    home: str | None = None

    def lookaside_for(self, ref: Reference, *, write: bool = False, euid: int | None = None) -> tuple[str, str]:
        """(URL, where it came from: a scope, ``default-docker`` or ``built-in default``)."""
        for scope in ref.scopes():
            sec = self.docker.get(scope)
            if sec is not None and sec.url(write):
                return sec.url(write), scope
        if self.default_docker is not None and self.default_docker.url(write):
            return self.default_docker.url(write), "default-docker"
        uid = (os.geteuid() if self.uid is None else self.uid) if euid is None else euid
        if uid == 0:
            return BUILTIN_ROOT_DEFAULT, "built-in default"
        home = self.home if self.home is not None else str(Path.home())
        return f"file://{home}/.local/share/containers/sigstore", "built-in default"

    def use_sigstore_attachments(self, ref: Reference) -> bool:
        for scope in ref.scopes():
            sec = self.docker.get(scope)
            if sec is not None and "use-sigstore-attachments" in sec.values:
                return bool(sec.values["use-sigstore-attachments"])
        if self.default_docker is not None and "use-sigstore-attachments" in self.default_docker.values:
            return bool(self.default_docker.values["use-sigstore-attachments"])
        return False


def effective_dir(root: str = "/", home: str | None = None) -> Path:
    """The directory c/image would read: ``~/.config/containers/registries.d`` if it exists, else /etc."""
    home = home if home is not None else os.path.expanduser("~")
    user = Path(home) / ".config" / "containers" / "registries.d"
    if root == "/" and user.is_dir():
        return user
    return Path(root) / SYSTEM_DIR.lstrip("/")


def load_dir(directory: str | os.PathLike[str]) -> RegistriesConfig:
    """Load and merge every ``*.yaml`` in ``directory``; conflicts raise PolicyError naming both files."""
    d = Path(directory)
    cfg = RegistriesConfig()
    if not d.exists():
        return cfg
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".yaml"))
    except OSError as exc:
        raise PolicyError(f"cannot read {d}: {exc.strerror}") from exc
    for name in names:
        path = d / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc.strerror}") from exc
        merge_file(cfg, text, str(path))
    return cfg


def merge_file(cfg: RegistriesConfig, text: str, source: str) -> None:
    """Add one registries.d file to ``cfg``. It is read by the one strict YAML reader (:mod:`atomicsig.format.
    yamlstrict`): duplicate keys are refused at any depth with ``file:line``, compared by their text as yaml.v3
    compares them (c/image: ``mapping key … already defined at line …``); unknown keys are ignored here, as
    c/image ignores them (SPEC §4.1)."""
    data = yamlstrict.load(text, source, PolicyError)[0]
    cfg.files.append(source)
    if data is None:
        return
    if not isinstance(data, dict):
        raise PolicyError(f"parsing {source}: top level is not a mapping")
    dd = data.get("default-docker")
    if dd is not None:
        if cfg.default_docker is not None:
            raise PolicyError(f'"default-docker" defined both in "{cfg.default_docker.source}" and "{source}"')
        if not isinstance(dd, dict):
            raise PolicyError(f"parsing {source}: default-docker is not a mapping")
        cfg.default_docker = Section(dd, source)
    docker = data.get("docker")
    if docker is None:
        return
    if not isinstance(docker, dict):
        raise PolicyError(f"parsing {source}: docker is not a mapping")
    for raw_scope, sec in docker.items():
        scope = str(raw_scope)
        if scope in cfg.docker:
            raise PolicyError(f'"docker" namespace "{scope}" defined both in "{cfg.docker[scope].source}" '
                              f'and "{source}"')
        cfg.docker[scope] = Section(sec if isinstance(sec, dict) else {}, source)


# ---- the URL a pull reads (``policy explain``) ---------------------------------------------------------------------

#: Characters Go's ``url.URL.String()`` leaves unescaped in a path besides letters, digits and ``-_.~``
#: (``shouldEscape(c, encodePath)`` in net/url: ``$&+,/:;=@`` are kept, ``?`` and everything else escaped).
_GO_PATH_SAFE = "$&+,/:;=@"
_GO_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class SignatureLocation:
    """Where c/image reads ``signature-1`` of one image from one lookaside base (SPEC §3.1)."""

    base: str
    url: str  # what c/image requests (http/https) or names (file), as Go's url.URL.String() prints it
    path: str | None = None  # file: the filesystem path c/image opens (the URL's decoded path)
    warnings: tuple[str, ...] = ()


def signature_location(base: str, repo: str, digest_hex: str) -> SignatureLocation:
    """The URL of ``signature-1`` c/image reads for repository path ``repo`` at sha256 ``digest_hex`` from the
    configured lookaside ``base``; raises PolicyError for a base c/image refuses, with c/image's reason.

    c/image (docker/registries_d.go ``lookasideStorageBaseURL``, ``lookasideStorageURL``; docker_image_src.go
    ``getOneSignature``) parses the base with Go's ``url.Parse`` ("Invalid signature storage URL" on failure:
    a leading ``:`` such as ``:emptyscheme`` is "missing protocol scheme", a bad ``%`` escape, a control
    character, a malformed host or port), appends ``"/" + <repo path>`` and ``@sha256=<hex>/signature-N`` to the
    *decoded* path (plain concatenation: a trailing ``/`` gives ``//``; a query stays after the path), and reads
    only ``file`` (the decoded path) and ``http``/``https``; any other scheme, including none at all
    (``/mnt/sigstore``), fails every pull with "Unsupported scheme". Go lower-cases the scheme.
    """
    where = f"lookaside URL {base!r}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in base):
        raise PolicyError(f"{where}: invalid control character in URL (c/image: Invalid signature storage URL)")
    if base.startswith(":"):
        raise PolicyError(f"{where}: missing protocol scheme (c/image: Invalid signature storage URL)")
    if _GO_ESCAPE.search(base):
        raise PolicyError(f"{where}: invalid URL escape (c/image: Invalid signature storage URL)")
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number, as url.Parse does
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc} (c/image: Invalid signature storage URL)") from exc
    scheme = parts.scheme.lower()
    if base[:1].isspace():  # Python's urlsplit strips it; Go sees no scheme and a path starting with it
        parts = parts._replace(scheme="")
        scheme = ""
    if ":" in base and not parts.scheme and not base.startswith("/"):
        head = base.split(":", 1)[0]
        if "/" not in head:  # Go: a first segment with ':' but no valid scheme is "first path segment … colon"
            raise PolicyError(f"{where}: first path segment in URL cannot contain colon (c/image: Invalid "
                              f"signature storage URL)")
    if scheme not in ("file", "http", "https"):
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise PolicyError(f"{where}: {shown}; c/image reads only file:, http: and https: (Unsupported scheme "
                          f"when reading signature) and every pull of this image fails")
    rel = signature_relpath(repo, f"sha256:{digest_hex}", 1)
    decoded = urllib.parse.unquote(parts.path)
    warnings = []
    if decoded.endswith("/"):
        warnings.append(f"{where} ends with '/': c/image requests '//{repo}@…' (no normalization)")
    if scheme == "file":
        if not parts.netloc and not parts.path.startswith("/"):
            raise PolicyError(f"{where}: file: URL without an absolute path; c/image would read "
                              f"/{rel} from the filesystem root (use file:///absolute/path)")
        if parts.netloc:
            warnings.append(f"{where}: c/image ignores the host {parts.netloc!r} of a file: URL")
        path = f"{decoded}/{rel}"
        return SignatureLocation(base, "file://" + urllib.parse.quote(path, safe=_GO_PATH_SAFE), path,
                                 tuple(warnings))
    if not parts.hostname:
        raise PolicyError(f"{where}: no host; c/image's HTTP client refuses the request (no Host in request URL)")
    path = urllib.parse.quote(f"{decoded}/{rel}", safe=_GO_PATH_SAFE)
    url = urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, parts.fragment))
    return SignatureLocation(base, url, None, tuple(warnings))
