"""Shared fixtures: real gpg homes, a real docker-registry, real skopeo."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra import GpgHome, Registry, cli_runner

HAVE_SKOPEO = shutil.which("skopeo") is not None
HAVE_REGISTRY = os.path.exists("/usr/bin/docker-registry") or shutil.which("docker-registry") is not None
HAVE_PODMAN = shutil.which("podman") is not None

# Each pytest-xdist worker (and every process it starts) takes ports from its own block of 500, so two workers never
# race for one port between the probe and the server's bind (atomicsig.demo.env.free_port).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    os.environ["ATOMICSIG_PORT_BLOCK"] = str(20000 + 500 * (int(_WORKER[2:]) % 24))

needs_registry = pytest.mark.skipif(not (HAVE_SKOPEO and HAVE_REGISTRY),
                                    reason="needs skopeo and docker-registry (installed by .ci/run)")


#: The longest tests and modules (``--durations`` of CI runs), started first so that under pytest-xdist none of
#: them begins near the end of the run and makes the tail. Order only: a name missing here (renamed, moved) costs
#: time, not coverage. Seconds are single-process figures.
LONG_FIRST = (
    "test_crash.py::test_sync_survives_sigkill",  # 188 s
    "test_crash.py::test_sign_survives_sigkill",  # 180 s
    "test_serve_load.py::test_load_no_errors",  # 157 s (its module, one unit, comes with it)
    "test_differential.py",  # 143 s
    "test_crash.py::test_policy_apply_survives_sigkill",  # 107 s
    "test_fuzz.py::test_atheris_targets_run_clean",  # 95 s
    "test_sync_hostile.py", "test_secrets.py", "test_agent_signer.py",  # the fast tier's longest modules
)
#: Modules whose tests share no module-scoped fixture and are each long: under xdist every test is its own unit
#: of work (any worker); every other module is one unit, so its module-scoped fixtures (an image corpus, an
#: installed tree, generated keys) are built once and its timing-bound tests never race each other.
SPREAD_MODULES = ("test_crash.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (scripts/test.sh), refined: :data:`SPREAD_MODULES` are split per test, and the second
    unit each worker is handed at the start comes from the end of the queue (short tests), not the next long
    one: an xdist worker always holds one unit beyond the running one, and two long tests queued on one worker
    would run one after the other while another worker idles."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):  # type: ignore[misc]
        initial = False

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.rsplit("/", 1)[-1] in SPREAD_MODULES else path

        def schedule(self) -> None:
            self.initial = self.collection is None
            try:
                super().schedule()
            finally:
                self.initial = False

        def _assign_work_unit(self, node: Any) -> None:
            if self.initial and self.assigned_work.get(node) and len(self.workqueue) > 1:
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._assign_work_unit(node)
    return Scheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller schedules in the workers' order
        def rank(item: pytest.Item) -> int:
            return next((i for i, name in enumerate(LONG_FIRST) if name in item.nodeid), len(LONG_FIRST))
        items.sort(key=rank)  # stable: the rest keeps collection order
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


@pytest.fixture(scope="module")
def short_workdir() -> Iterator[Path]:
    """podman refuses a runroot longer than 50 characters, which pytest's tmp paths exceed."""
    d = Path(tempfile.mkdtemp(prefix="aspod-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
