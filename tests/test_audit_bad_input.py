"""``atomicsig audit`` on bad input (issue 14 "Bad input"): one clear line naming the file (and the line for a
broken policy.json), exit 2 for broken input, 3 for a node state that cannot be read, and nothing written.

No registry is needed: every policy here decides before an image would be fetched, and image references point at
a free local port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.infra import free_port

ACCEPT = {"default": [{"type": "insecureAcceptAnything"}]}


def _node(tmp_path: Path, policy: str) -> Path:
    root = tmp_path / "node"
    (root / "etc/containers").mkdir(parents=True)
    (root / "etc/containers/policy.json").write_text(policy)
    return root


def _ref() -> str:
    return f"127.0.0.1:{free_port()}/bad/input:1"


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


def test_broken_policy_json_names_file_line_and_column(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _node(tmp_path, '{\n  "default": [\n    {"type": "reject"},\n  ]\n}\n')
    pol = root / "etc/containers/policy.json"
    report = tmp_path / "report.yaml"
    code, out, err = cli("audit", "--root", str(root), "--report", str(report), _ref())
    assert code == 2 and _one_line(err), err
    assert f"{pol}:4:3: not valid JSON" in err
    assert out == "" and not report.exists()
    pol.write_text('{"default": [{"type": "reject"}],\n "transports": {},\n "default": []}\n')
    code, _, err = cli("audit", "--root", str(root), "--report", str(report), _ref())
    assert code == 2 and _one_line(err) and f"{pol}:3:2: duplicate key 'default'" in err, err
    assert not report.exists()


def test_broken_registries_d_yaml(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _node(tmp_path, json.dumps(ACCEPT))
    bad = root / "etc/containers/registries.d/bad.yaml"
    bad.parent.mkdir()
    bad.write_text("docker:\n  quay.io:\n    lookaside: https://a\n    lookaside: https://b\n")
    report = tmp_path / "r.json"
    code, out, err = cli("audit", "--root", str(root), "--report", str(report), "--json", _ref())
    assert code == 2 and _one_line(err) and f"{bad}:4" in err and "duplicate key" in err, err
    assert out == "" and not report.exists()
    bad.write_text("docker: [unclosed\n")
    code, _, err = cli("audit", "--root", str(root), _ref())
    assert code == 2 and _one_line(err) and str(bad) in err, err


def test_report_destination_checked_before_any_work(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Before: the whole audit ran, then writing the report failed with an OSError (exit 3, answer lost)."""
    root = _node(tmp_path, json.dumps({"default": [{"type": "reject"}]}))
    code, out, err = cli("audit", "--root", str(root), "--report", str(tmp_path / "missing/report.yaml"), _ref())
    assert code == 2 and _one_line(err) and "does not exist" in err and out == "", err
    code, _, err = cli("audit", "--root", str(root), "--report", str(tmp_path), _ref())
    assert code == 2 and "is a directory" in err


def test_unreadable_storage_is_exit_3_and_writes_nothing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A store that exists but cannot be read safely (its image directory is a symlink): could not check, 3."""
    root = _node(tmp_path, json.dumps(ACCEPT))
    graphroot = tmp_path / "storage"
    (tmp_path / "elsewhere").mkdir()
    graphroot.mkdir()
    os.symlink(tmp_path / "elsewhere", graphroot / "vfs-images")
    report = tmp_path / "report.yaml"
    code, out, err = cli("audit", "--root", str(root), "--storage", "--storage-root", str(graphroot),
                         "--report", str(report))
    assert code == 3 and _one_line(err) and "vfs-images" in err, err
    assert out == "" and not report.exists()


def test_fifo_policy_json_does_not_hang(tmp_path: Path) -> None:
    """A FIFO planted at policy.json used to block the audit forever (read_bytes waits for a writer)."""
    root = tmp_path / "node"
    (root / "etc/containers").mkdir(parents=True)
    os.mkfifo(root / "etc/containers/policy.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "atomicsig", "audit", "--root", str(root), _ref()],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3 and "not a regular file" in proc.stderr, proc.stderr


def test_policy_json_containers_image_refuses_names_the_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Valid JSON that containers/image refuses (unknown field, empty requirement list): file:line:col of the
    offending requirement or scope, exit 2, nothing written. Before: the file only, no position."""
    text = ('{\n  "default": [{"type": "reject"}],\n  "transports": {\n    "docker": {\n'
            '      "quay.io/ok": [{"type": "insecureAcceptAnything"}],\n'
            '      "quay.io/bad": [\n'
            '        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyPth": "/x"}\n'
            '      ]\n    }\n  }\n}\n')
    root = _node(tmp_path, text)
    pol = root / "etc/containers/policy.json"
    report = tmp_path / "report.yaml"
    code, out, err = cli("audit", "--root", str(root), "--report", str(report), _ref())
    assert code == 2 and _one_line(err), err
    assert f"{pol}:7:9: transports.docker['quay.io/bad'][0]: unknown key 'keyPth' in signedBy" in err
    assert out == "" and not report.exists()


def test_problem_positions() -> None:
    from atomicsig.format import policyjson

    text = '{"default": [],\n "transports": {"docker-archive": {"x": [{"type": "reject"}]}, "oci": 1},\n "z": 0}'
    doc = json.loads(text)
    where = {p: policyjson.problem_position(text, p) for p in policyjson.problems(doc)}
    assert list(where.values()) == [(3, 2), (1, 2), (2, 36), (2, 64)], where  # each at its key
    assert policyjson.problem_position("not json", "default: x") is None
