"""Shared fixtures: real gpg homes, a real docker-registry, real skopeo."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import GpgHome, Registry, cli_runner

HAVE_SKOPEO = shutil.which("skopeo") is not None
HAVE_REGISTRY = os.path.exists("/usr/bin/docker-registry") or shutil.which("docker-registry") is not None
HAVE_PODMAN = shutil.which("podman") is not None

needs_registry = pytest.mark.skipif(not (HAVE_SKOPEO and HAVE_REGISTRY),
                                    reason="needs skopeo and docker-registry (installed by .ci/run)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # In CI a missing tool is a failure, not a skip: a green run must mean the interop tests ran.
    if os.environ.get("CI") and not (HAVE_SKOPEO and HAVE_REGISTRY and HAVE_PODMAN):
        raise pytest.UsageError("CI=true but skopeo/podman/docker-registry are missing; .ci/run must install them")
    # Likewise the test extras some fast tests import: a skipped fuzz replay would pass CI without replaying.
    missing = [m for m in ("atheris", "pip_audit") if importlib.util.find_spec(m) is None]
    if os.environ.get("CI") and missing:
        raise pytest.UsageError(f"CI=true but {', '.join(missing)} cannot be imported; scripts/ must install it")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def signer(session_dir: Path) -> Iterator[GpgHome]:
    """One ed25519 signing key for the whole session (key generation is the slow part of gpg)."""
    home = GpgHome(session_dir / "gnupg-signer").create()
    yield home
    home.kill_agent()


@pytest.fixture(scope="session")
def other_signer(session_dir: Path) -> Iterator[GpgHome]:
    home = GpgHome(session_dir / "gnupg-other", email="other@example.com", algorithm="rsa2048").create()
    yield home
    home.kill_agent()


@pytest.fixture(scope="session")
def signer_pub(signer: GpgHome, session_dir: Path) -> Path:
    return signer.export_public(session_dir / "signer.gpg")


@pytest.fixture(scope="session")
def registry(session_dir: Path) -> Iterator[Registry]:
    if not (HAVE_SKOPEO and HAVE_REGISTRY):
        pytest.skip("needs skopeo and docker-registry")
    reg = Registry(session_dir / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the real CLI in-process; returns (exit_code, stdout, stderr)."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        runner = cli_runner()
        result: dict[str, int] = {}

        def _main() -> None:
            result["code"] = run_main(group, list(args))

        with runner.isolation(input=input, env=env) as (out, err, *_):
            _main()
            return result["code"], out.getvalue().decode(), err.getvalue().decode()
    return run
