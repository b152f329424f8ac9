"""Registry credentials from the files podman, skopeo and docker use (containers-auth.json(5)).

Lookup order, as containers/image: ``--authfile`` (or ``$REGISTRY_AUTH_FILE``), then
``${XDG_RUNTIME_DIR}/containers/auth.json``, then ``~/.docker/config.json``. Within a file, the most specific key
wins: ``host/ns/repo``, ``host/ns``, ``host``; legacy ``https://host/v1/`` keys are honoured.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from atomicsig.errors import InputError


def auth_files(authfile: str | None = None) -> list[Path]:
    if authfile:
        return [Path(authfile)]
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return [Path(env)]
    out = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        out.append(Path(xdg) / "containers" / "auth.json")
    out.append(Path.home() / ".docker" / "config.json")
    return out


def _keys_for(host: str, repo_path: str) -> list[str]:
    keys = []
    parts = repo_path.split("/") if repo_path else []
    for i in range(len(parts), 0, -1):
        keys.append(f"{host}/{'/'.join(parts[:i])}")
    keys += [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    return keys


def credentials(host: str, repo_path: str = "", authfile: str | None = None) -> tuple[str, str] | None:
    """(username, password) for ``host``/``repo_path`` from the first auth file that has an entry, else None."""
    explicit = authfile is not None
    for path in auth_files(authfile):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if explicit:
                raise InputError(f"auth file {path} does not exist") from None
            continue
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read auth file {path}: {exc}") from exc
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        for key in _keys_for(host, repo_path):
            entry = auths.get(key)
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InputError(f"auth file {path}: invalid auth entry for {key}") from exc
                return user, pw
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return entry["username"], entry["password"]
            if isinstance(entry.get("identitytoken"), str):
                return "<token>", entry["identitytoken"]
    return None
