"""Write tokens for ``atomicsig serve``, read from a file at each use, never from argv or the environment."""

from __future__ import annotations

from pathlib import Path

from atomicsig.errors import InputError


def read_token_file(path: str) -> str:
    """First line of a token file; refuses an empty token (that would make every request authorized)."""
    try:
        token = Path(path).read_text(encoding="utf-8").splitlines()[0].strip() if Path(path).stat().st_size else ""
    except OSError as exc:
        raise InputError(f"cannot read token file {path}: {exc.strerror}") from exc
    if len(token) < 16:
        raise InputError(f"token in {path} is empty or shorter than 16 characters")
    return token
