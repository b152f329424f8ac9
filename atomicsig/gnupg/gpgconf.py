"""``gpgconf``, run from one place: where a GnuPG home's agent listens, starting it, stopping it.

Every gpgconf call in atomicsig goes through :func:`run` (or :func:`kill_agents`, the best-effort cleanup built on
it), so each one gets the same ``--homedir`` handling, timeout and child environment: passphrase variables
never reach gpgconf or the gpg-agent it launches (:func:`atomicsig.gnupg.passphrase.child_env`).
"""

from __future__ import annotations

import contextlib
import subprocess
from os import PathLike

from atomicsig.errors import GPGError
from atomicsig.gnupg.passphrase import child_env


class GpgconfError(GPGError):
    """gpgconf could not be run, or exited non-zero (the message carries its last stderr line)."""


def run(home: str | PathLike[str] | None, args: list[str], *, timeout: float = 30) -> str:
    """Run ``gpgconf [--homedir HOME] ARGS`` and return its standard output; GpgconfError if it fails."""
    cmd = ["gpgconf", *(["--homedir", str(home)] if home else []), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=timeout, env=child_env())
    except (OSError, subprocess.SubprocessError) as exc:
        raise GpgconfError(f"cannot run gpgconf: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GpgconfError(f"gpgconf {args[0]} failed: {err[-1] if err else proc.returncode}")
    return proc.stdout.decode(errors="replace")


def kill_agents(home: str | PathLike[str]) -> None:
    """Stop every daemon (gpg-agent, dirmngr, …) of GnuPG home ``home`` (``gpgconf --kill all``), best effort.

    For throwaway homes: deleting the directory alone leaves its agent running with nothing to serve.
    """
    with contextlib.suppress(GpgconfError):
        run(home, ["--kill", "all"], timeout=10)
