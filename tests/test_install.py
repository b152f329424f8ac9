"""Installing on a real node (issue 11): scripts/install.sh into a --root, the systemd units checked with
``systemd-analyze verify`` on that tree, sysusers.d/tmpfiles.d applied offline under the root, man pages from the
click tree, the noarch RPM built with rpmbuild, and the OpenShift examples (docs/install.md).

Everything runs offline against real tools (systemd-analyze, systemd-sysusers, systemd-tmpfiles, groff, man,
rpmbuild, gpg) except the one pip install, which needs PyPI for the dependencies. Static only: the container
has no systemd as PID 1, so nothing is started.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path

import pytest
import yaml

import atomicsig
from atomicsig.cli import cli

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install.sh"
UNITS = ("atomicsig-serve.service", "atomicsig-sync.service", "atomicsig-audit.service", "atomicsig-audit.timer")


def _gen_man():  # scripts/ is not a package: load gen-man.py by path
    spec = importlib.util.spec_from_file_location("gen_man", REPO / "scripts" / "gen-man.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _command_paths(cmd=cli, path=("atomicsig",), parent=None) -> list[tuple[str, ...]]:
    import click

    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    paths = [path]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            paths += _command_paths(sub, (*path, name), ctx)
    return paths


def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # The interpreter of this test run: >= 3.11 like the node's, and the one CI set up.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return _run(["bash", str(INSTALL), "--root", str(root), "--python", sys.executable, *extra], timeout=540,
                env=env)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("noderoot")
    res = _install(r)
    assert res.returncode == 0, res.stdout + res.stderr
    return r


def _base_os(root: Path) -> None:
    """What a node's base OS provides and verify resolves under --root: the targets the units order against
    (their default dependencies) and the helper binaries they name (/bin/kill, /usr/bin/install)."""
    unitdir = root / "usr/lib/systemd/system"
    for unit in ("sysinit.target", "basic.target", "network-online.target", "multi-user.target",
                 "shutdown.target", "sockets.target", "paths.target", "timers.target", "slices.target",
                 "local-fs.target", "swap.target", "system.slice", "-.slice"):
        host = Path("/usr/lib/systemd/system") / unit
        if host.exists() and not (unitdir / unit).exists():
            shutil.copy(host, unitdir / unit)
    for tool in ("/bin/kill", "/usr/bin/install"):
        dest = root / tool.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copy(tool, dest)


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    # --root makes verify resolve unit files, drop-ins and ExecStart=/ExecReload= binaries inside the root;
    # Documentation=man: pages are looked up by the host's man(1), pointed at the root's man pages by MANPATH.
    env = {**os.environ, "MANPATH": str(root / "usr/share/man")}
    return _run(["systemd-analyze", "verify", f"--root={root}", *units], env=env)


# --- fast: files in the checkout ----------------------------------------------------------------------------------

def test_every_command_has_a_man_page_that_renders(tmp_path: Path) -> None:
    pages = _gen_man().generate()
    for path in _command_paths():
        assert "-".join(path) + ".1" in pages, f"no man page for {' '.join(path)}"
    assert len(pages) == len(_command_paths())
    groff = shutil.which("groff")
    assert groff, "groff is installed by scripts/setup.sh (groff-base)"
    for name, text in pages.items():
        f = tmp_path / name
        f.write_text(text)
        res = _run([groff, "-man", "-Tutf8", "-ww", "-z", str(f)])
        assert res.returncode == 0 and res.stderr == "", f"{name}: {res.stderr}"
        assert text.isascii(), f"{name}: non-ASCII must be escaped for groff without preconv"
    shown = _run(["man", "-l", str(tmp_path / "atomicsig-sign.1")], env={**os.environ, "MANWIDTH": "100"})
    assert shown.returncode == 0
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS"):
        assert section in shown.stdout
    # Every option of the command is on its page, as --help shows it.
    for flag in ("--key", "--sigstore", "--dry-run", "--json"):
        assert flag in shown.stdout
    assert "See atomicsig-serve(1)" in _run(["man", "-l", str(tmp_path / "atomicsig.1")],
                                            env={**os.environ, "MANWIDTH": "200"}).stdout


def test_units_point_at_installed_things() -> None:
    """Regression for the shipped units: Documentation= named files nothing installed, the access log and the
    quarantine were read-only under ProtectSystem=strict, and nothing created the directories."""
    tmpfiles = (REPO / "systemd/atomicsig.tmpfiles").read_text()
    created = {f[1] for line in tmpfiles.splitlines() if (f := line.split()) and f[0] == "d"}
    pages = _gen_man().generate()
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text()
        for doc in re.findall(r"man:([\w-]+)\(1\)", text):
            assert f"{doc}.1" in pages
        assert "man:" in text
        for rw in re.findall(r"^ReadWritePaths=(.*)$", text, re.M):
            for p in rw.split():
                assert p in created, f"{unit}: ReadWritePaths={p} is not created by tmpfiles.d"
    assert "LogsDirectory=atomicsig" in (REPO / "systemd/atomicsig-serve.service").read_text()
    assert "StateDirectory=atomicsig" in (REPO / "systemd/atomicsig-sync.service").read_text()
    serve_cfg = yaml.safe_load((REPO / "packaging/config/serve.yaml").read_text())
    assert serve_cfg["access-log"].startswith("/var/log/atomicsig/")
    sync_cfg = yaml.safe_load((REPO / "packaging/config/sync.yaml").read_text())
    assert sync_cfg["quarantine"].startswith("/var/lib/atomicsig/")
    # The systemd 239 drop-in uses nothing from 247 (LoadCredential=, %d) in its directives.
    compat = [line for line in (REPO / "systemd/compat-239-serve.conf").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert not any("%d" in line or line.startswith("LoadCredential") for line in compat)
    assert any(line.startswith("ExecStartPre=+/usr/bin/install") for line in compat)


def _directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = (REPO / "systemd" / unit).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(" ".join(value.split()))
    return out


def test_audit_units_are_hardened_and_run_the_real_command() -> None:
    """atomicsig-audit.service (issue 14 #2): the sync unit's sandbox, no capabilities, writes only its
    StateDirectory; exit 1 (some image would be refused) is a successful run; ExecStart= parses with the CLI's
    own parser and writes the report and metrics where the unit may write; the timer starts that service."""
    import click

    audit, sync = _directives("atomicsig-audit.service"), _directives("atomicsig-sync.service")
    sandbox = {k for k in sync if k.startswith(("Protect", "Private", "Restrict", "SystemCall", "Lock", "Memory",
                                                "NoNew", "Capability", "Ambient", "UMask"))}
    missing = {k for k in sandbox if k not in audit}
    assert not missing, missing
    assert audit["CapabilityBoundingSet"] == [""] and audit["AmbientCapabilities"] == [""]
    assert audit["ProtectSystem"] == ["strict"] and "ReadWritePaths" not in audit
    assert audit["SuccessExitStatus"] == ["1"] and audit["Type"] == ["oneshot"]
    (cmd,) = audit["ExecStart"]
    argv = cmd.split()
    assert argv[0] == "/usr/bin/atomicsig"
    sub = cli.get_command(click.Context(cli), argv[1])
    assert isinstance(sub, click.Command) and sub.name == "audit"
    params = sub.make_context("audit", argv[2:]).params
    assert params["storage"] is True
    state = "/var/lib/" + audit["StateDirectory"][0]
    for key in ("report_file", "metrics_file"):
        assert str(params[key]).startswith(state + "/"), key
    timer = _directives("atomicsig-audit.timer")
    assert timer["Unit"] == ["atomicsig-audit.service"] and timer["WantedBy"] == ["timers.target"]


def test_sample_configs_parse_with_the_daemons_own_parsers() -> None:
    from atomicsig.serve import config as serve_config
    from atomicsig.sync import config as sync_config

    cfg = sync_config.parse(yaml.safe_load((REPO / "packaging/config/sync.yaml").read_text()), "sync.yaml")
    assert str(cfg.sigstore) == "/var/lib/atomic/sigstore"
    serve = serve_config.load_file(str(REPO / "packaging/config/serve.yaml"))
    assert serve["sigstore"] == "/var/lib/atomic/sigstore"


def test_spec_version_matches_package() -> None:
    spec = (REPO / "packaging/atomicsig.spec").read_text()
    assert re.search(r"^Version:\s+(\S+)$", spec, re.M).group(1) == atomicsig.__version__
    assert re.search(r"^BuildArch:\s+noarch$", spec, re.M)


def _data_url(source: str) -> bytes:
    head, _, data = source.partition(",")
    assert head.startswith("data:")
    return base64.b64decode(data) if head.endswith(";base64") else urllib.parse.unquote_to_bytes(data)


def _check_machineconfig(mc: dict) -> dict[str, bytes]:
    assert mc["apiVersion"] == "machineconfiguration.openshift.io/v1"
    assert mc["kind"] == "MachineConfig"
    assert mc["metadata"]["name"]
    assert mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"] in ("worker", "master")
    ign = mc["spec"]["config"]
    assert ign["ignition"]["version"].startswith("3.")
    files = {}
    for f in ign["storage"]["files"]:
        assert f["path"].startswith("/etc/") and isinstance(f["mode"], int) and f["overwrite"] is True
        files[f["path"]] = _data_url(f["contents"]["source"])
    return files


def test_openshift_examples_are_valid() -> None:
    docs = list(yaml.safe_load_all((REPO / "packaging/openshift/daemonset.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}
    ds = kinds["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    (c,) = pod["containers"]
    assert c["image"] and c["args"][0] == "sync"
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["sigstore"]["hostPath"]["path"] == "/var/lib/atomic/sigstore"
    for m in c["volumeMounts"]:
        assert m["name"] in volumes
        if "subPath" in m:
            assert m["subPath"] in kinds["ConfigMap"]["data"]
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    sync_yaml = yaml.safe_load(kinds["ConfigMap"]["data"]["sync.yaml"])
    from atomicsig.sync import config as sync_config

    cfg = sync_config.parse(sync_yaml, "ConfigMap sync.yaml")
    assert str(cfg.sigstore) in mounted and all(str(k) in mounted for k in cfg.trusted_keys)

    files = _check_machineconfig(yaml.safe_load(
        (REPO / "packaging/openshift/machineconfig-signature-policy.yaml").read_text()))
    policy = json.loads(files["/etc/containers/policy.json"])
    (req,) = policy["transports"]["docker"]["registry.example.com/team"]
    assert req["type"] == "signedBy" and req["keyPath"] in files
    assert files[req["keyPath"]][0] & 0x80, "the key file is a binary OpenPGP packet stream"
    regd = yaml.safe_load(files["/etc/containers/registries.d/atomicsig.yaml"])
    assert regd["docker"]["registry.example.com/team"]["lookaside"] == "file:///var/lib/atomic/sigstore"


def test_machineconfig_example_is_what_policy_render_makes(tmp_path: Path) -> None:
    """The checked-in MachineConfig is reproducible from packaging/openshift/policy.yaml with any key."""
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    assert _run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                 "test <t@example.com>", "ed25519", "sign", "never"], env=env).returncode == 0
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/release.gpg").write_bytes(subprocess.run(["gpg", "--export"], env=env, check=True,
                                                               capture_output=True).stdout)
    shutil.copy(REPO / "packaging/openshift/policy.yaml", tmp_path / "policy.yaml")
    res = _run([sys.executable, "-m", "atomicsig", "policy", "render", "-f", "policy.yaml", "--name",
                "51-atomicsig-signed-images"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    fresh = _check_machineconfig(yaml.safe_load(res.stdout))
    shipped = _check_machineconfig(yaml.safe_load(
        (REPO / "packaging/openshift/machineconfig-signature-policy.yaml").read_text()))

    def norm(files: dict[str, bytes]) -> dict[str, bytes]:
        out = {}
        for path, data in files.items():
            if path.endswith(".gpg"):
                continue
            out[path] = re.sub(rb"atomicsig-release-[0-9a-f]+\.gpg", b"KEY", data)
        return out

    assert norm(fresh) == norm(shipped)


def test_containerfile_parses() -> None:
    """No registry here to build it: parse the instructions, check the entrypoint and what it copies/runs."""
    text = (REPO / "packaging/Containerfile").read_text()
    instructions = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instructions.append(line.split(None, 1))
    known = {"FROM", "ARG", "RUN", "COPY", "ENTRYPOINT", "CMD", "ENV", "USER", "LABEL", "WORKDIR"}
    assert all(i[0] in known for i in instructions), instructions
    names = [i[0] for i in instructions]
    assert names.index("FROM") == min(names.index(n) for n in names if n != "ARG")
    entry = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entry == ["/usr/bin/atomicsig"]
    assert json.loads(dict(instructions)["CMD"])[0] == "sync"
    assert "scripts/install.sh" in text and (REPO / "scripts/install.sh").exists()


# --- slow: the real install ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_installed_command_runs_isolated(root: Path, tmp_path: Path) -> None:
    exe = root / "usr/bin/atomicsig"
    res = _run([str(exe), "--version"])
    assert res.returncode == 0 and res.stdout.strip().endswith(atomicsig.__version__)
    # Neither PYTHONPATH nor the working directory may swap the code a root-run daemon imports (python -I).
    for where in ("pp", "cwd"):
        fake = tmp_path / where / "atomicsig"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text(f"raise SystemExit('atomicsig imported from {where}')\n")
    res = _run([str(exe), "--help"], env={**os.environ, "PYTHONPATH": str(tmp_path / "pp")}, cwd=tmp_path / "cwd")
    assert res.returncode == 0, res.stderr
    for name in ("sign", "verify", "serve", "sync"):
        assert name in res.stdout
    # The venv records its final path, not the staging root (the tree works once copied to /).
    for f in (root / "opt/atomicsig/bin").iterdir():
        if f.is_file() and not f.is_symlink():
            assert str(root) not in f.read_text(errors="replace"), f
    assert "/opt/atomicsig/bin/python" in (root / "opt/atomicsig/bin/atomicsig").read_text().splitlines()[0]


@pytest.mark.slow
def test_installed_tree_has_everything(root: Path) -> None:
    for rel in ("usr/lib/systemd/system/atomicsig-serve.service", "usr/lib/systemd/system/atomicsig-sync.service",
                "usr/lib/systemd/system/atomicsig-audit.service", "usr/lib/systemd/system/atomicsig-audit.timer",
                "usr/lib/sysusers.d/atomicsig.conf", "usr/lib/tmpfiles.d/atomicsig.conf",
                "usr/share/doc/atomicsig/serve.md", "usr/share/doc/atomicsig/sync.md",
                "usr/share/doc/atomicsig/install.md", "usr/share/man/man1/atomicsig-serve.1",
                "usr/share/man/man1/atomicsig-sync.1", "etc/atomicsig/serve.yaml", "etc/atomicsig/sync.yaml",
                "usr/share/atomicsig/systemd/compat-239-serve.conf"):
        assert (root / rel).is_file(), rel
    for path in _command_paths():
        assert (root / "usr/share/man/man1" / ("-".join(path) + ".1")).is_file()
    # Shell completion works through the installed launcher (click's protocol, as bash calls it).
    assert "_ATOMICSIG_COMPLETE=bash_complete" in (root / "usr/share/bash-completion/completions/atomicsig").read_text()
    assert (root / "usr/share/zsh/site-functions/_atomicsig").is_file()
    assert (root / "usr/share/fish/vendor_completions.d/atomicsig.fish").is_file()
    res = _run([str(root / "usr/bin/atomicsig")], env={**os.environ, "_ATOMICSIG_COMPLETE": "bash_complete",
                                                     "COMP_WORDS": "atomicsig sign --sig", "COMP_CWORD": "2"})
    assert "plain,--sigstore" in res.stdout.splitlines(), res.stdout + res.stderr
    # file:// Documentation= targets exist in the tree (verify checks only man: ones).
    for unit in UNITS:
        for doc in re.findall(r"file://(\S+)", (root / "usr/lib/systemd/system" / unit).read_text()):
            assert (root / doc.lstrip("/")).is_file(), doc


@pytest.mark.slow
def test_units_verify_on_installed_tree(root: Path) -> None:
    _base_os(root)
    res = _verify(root, *UNITS)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    # The check is real: a man page that is not installed, or an ExecStart= binary missing under the root, fails.
    manpage = root / "usr/share/man/man1/atomicsig-sync.1"
    saved = manpage.read_bytes()
    manpage.unlink()
    try:
        res = _verify(root, "atomicsig-sync.service")
        assert res.returncode != 0 and "man atomicsig-sync(1)" in res.stderr
    finally:
        manpage.write_bytes(saved)
    launcher = root / "usr/bin/atomicsig"
    launcher.rename(launcher.with_suffix(".off"))
    try:
        res = _verify(root, "atomicsig-serve.service")
        assert res.returncode != 0 and "/usr/bin/atomicsig is not executable" in res.stderr
    finally:
        launcher.with_suffix(".off").rename(launcher)


@pytest.mark.slow
def test_sysusers_and_tmpfiles_create_user_and_dirs(root: Path) -> None:
    res = _run(["systemd-sysusers", f"--root={root}"])
    assert res.returncode == 0, res.stderr
    entry = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith("atomicsig:"))
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert 0 < uid < 1000 and home == "/var/lib/atomicsig" and shell.endswith("nologin")
    res = _run(["systemd-tmpfiles", f"--root={root}", "--create"])
    assert res.returncode == 0, res.stderr
    for rel, mode, owner in (("var/lib/atomic/sigstore", 0o755, uid), ("var/lib/atomicsig", 0o750, uid),
                             ("var/log/atomicsig", 0o750, uid), ("etc/atomicsig", 0o755, 0),
                             ("var/lib/atomic", 0o755, 0)):
        st = (root / rel).stat()
        assert (st.st_mode & 0o7777, st.st_uid) == (mode, owner), rel
    assert (root / "var/lib/atomic/sigstore").stat().st_gid == gid


@pytest.mark.slow
def test_rerun_is_idempotent_and_compat_dropin_verifies(root: Path) -> None:
    before = (root / "etc/atomicsig/sync.yaml")
    before.write_text(before.read_text() + "# edited by the admin\n")
    res = _install(root, "--systemd-compat", "239")
    assert res.returncode == 0, res.stdout + res.stderr
    assert before.read_text().endswith("# edited by the admin\n"), "install.sh must not overwrite configs"
    dropin = root / "etc/systemd/system/atomicsig-serve.service.d/10-compat-239.conf"
    assert dropin.is_file()
    _base_os(root)
    res = _verify(root, "atomicsig-serve.service")
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert _run([str(root / "usr/bin/atomicsig"), "--version"]).returncode == 0


@pytest.mark.slow
def test_rpm_builds_noarch_with_units_and_man_pages(tmp_path: Path) -> None:
    rpmbuild = shutil.which("rpmbuild")
    assert rpmbuild, "rpmbuild comes from the Debian package rpm (scripts/setup.sh)"
    version = atomicsig.__version__
    top = tmp_path / "rpm"
    (top / "SOURCES").mkdir(parents=True)
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO)
    assert listed.returncode == 0
    with tarfile.open(top / "SOURCES" / f"atomicsig-{version}.tar.gz", "w:gz") as tar:
        for rel in filter(None, listed.stdout.split("\0")):
            if (REPO / rel).is_file():
                tar.add(REPO / rel, arcname=f"atomicsig-{version}/{rel}")
    # --nodeps: BuildRequires name Fedora packages that Debian's rpm database does not know.
    res = _run([rpmbuild, "-bb", "--nodeps", "--define", f"_topdir {top}", "--define", f"__python3 {sys.executable}",
                str(REPO / "packaging/atomicsig.spec")], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (pkg,) = (top / "RPMS" / "noarch").glob(f"atomicsig-{version}-*.noarch.rpm")
    files = set(_run(["rpm", "-qlp", str(pkg)]).stdout.split())
    for f in ("/usr/bin/atomicsig", "/usr/lib/systemd/system/atomicsig-serve.service",
              "/usr/lib/systemd/system/atomicsig-sync.service", "/usr/lib/sysusers.d/atomicsig.conf",
              "/usr/lib/systemd/system/atomicsig-audit.service", "/usr/lib/systemd/system/atomicsig-audit.timer",
              "/usr/lib/tmpfiles.d/atomicsig.conf", "/etc/atomicsig/serve.yaml", "/etc/atomicsig/sync.yaml",
              "/usr/share/doc/atomicsig/serve.md", "/usr/share/doc/atomicsig/sync.md",
              "/var/lib/atomic/sigstore", "/var/log/atomicsig", "/usr/share/bash-completion/completions/atomicsig"):
        assert f in files, f
    for path in _command_paths():
        page = "/usr/share/man/man1/" + "-".join(path) + ".1"
        assert page in files or page + ".gz" in files, page
    assert any(re.fullmatch(r"/usr/lib/python3\.\d+/site-packages/atomicsig/cli/__init__\.py", f) for f in files)
    requires = _run(["rpm", "-qpR", str(pkg)]).stdout
    for dep in ("python3-gnupg", "python3-click", "python3-cheroot", "gnupg2", "python(abi)"):
        assert dep in requires
    with pkg.open("rb") as f:  # rpm2archive (from the rpm package): the payload as a .tar.gz on stdout
        payload = subprocess.run(["rpm2archive", "-"], stdin=f, capture_output=True, timeout=60, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        member = tar.extractfile("./usr/bin/atomicsig")
        assert member is not None
        launcher = member.read().decode()
    assert launcher.startswith("#!/usr/bin/python3 -I\n") and "from atomicsig.cli import main" in launcher


@pytest.mark.slow
def test_uninstall_removes_code_keeps_config_and_data(root: Path) -> None:
    (root / "var/lib/atomic/sigstore").mkdir(parents=True, exist_ok=True)
    res = _run(["bash", str(INSTALL), "--root", str(root), "--uninstall"])
    assert res.returncode == 0, res.stderr
    for rel in ("opt/atomicsig", "usr/bin/atomicsig", "usr/lib/systemd/system/atomicsig-serve.service",
                "usr/lib/systemd/system/atomicsig-audit.service", "usr/lib/systemd/system/atomicsig-audit.timer",
                "usr/share/bash-completion/completions/atomicsig",
                "usr/lib/sysusers.d/atomicsig.conf", "usr/share/man/man1/atomicsig.1", "usr/share/doc/atomicsig",
                "etc/systemd/system/atomicsig-serve.service.d"):
        assert not (root / rel).exists(), rel
    assert (root / "etc/atomicsig/sync.yaml").exists() and (root / "var/lib/atomic/sigstore").is_dir()
