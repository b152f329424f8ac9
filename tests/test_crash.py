"""Crash consistency (issue #7 item 4): SIGKILL ``sign``, ``policy apply`` and ``sync`` at random points.

Each part starts the real CLI in its own process group and kills the whole group (gpg children included) with
SIGKILL after a delay drawn uniformly from the measured runtime of an unkilled run, then checks what a reader
would see on disk. The checks run in this process and stay cheap: signature files are immutable once named, so
each one is parsed once and afterwards only its inode and size are compared.

Beyond "none missing": no signature is ever doubled (one file per signed identity, identical bytes once per
directory) and the journal never holds two lines for one file; after the final unkilled run it holds exactly one
``add`` line per file and nothing else (``StoreAudit.assert_journal_lines_equal_files``).

Reproduce a failure with the seed printed by the failing test: ``ATOMICSIG_CRASH_SEED=<seed>``.
``ATOMICSIG_CRASH_ITERATIONS`` (default 200) sets the number of kills per part.

What a kill may legitimately leave behind, and why it is harmless (asserted below):

* ``.tmp-*`` files next to ``signature-N`` or policy files (``fsutil`` removes them only when it gets to run its
  ``finally``): no reader opens them — c/image and our readers open ``signature-<n>`` by name, registries.d
  readers take only ``*.yaml``, policy.json and keyrings are opened by exact path.
* ``policy.json.atomicsig-next`` / ``registries.d/atomicsig.yaml.atomicsig-next``: the complete next version
  staged for ``policy apply``'s two commit renames; nothing reads those names, and the next apply removes them.
* a ``signature-N`` that is not (yet) in the sync journal: killed between the link and the journal append. It
  is then named by the dead writer's pending record (``.atomicsig/pending/``), and the next journal writer
  appends its line; after the final unkilled run every signature is in the journal.
* a torn last journal line: the next appender cuts it, and readers skip a line without its newline.
* empty ``<repo>@sha256=<hex>`` directories: they read as "no signatures", exactly like a missing one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from atomicsig.format import payload, policyjson
from atomicsig.format.blob import simple_signing_body
from atomicsig.format.reference import parse as parse_ref
from atomicsig.format.sigpath import digest_dirname
from atomicsig.gnupg.keyring import Keyring, TrustedKeys
from atomicsig.openpgp import packets as openpgp
from atomicsig.policy import apply as policy_apply
from atomicsig.policy import keymaterial, schema
from atomicsig.signers.memory import memory_signer
from atomicsig.store import registries_d
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import HEADER_LEN, Journal, iter_lines, parse_header, parse_line, sha256_hex
from atomicsig.sync.state import SyncState
from tests.infra import GpgHome, serve_sigstore

pytestmark = pytest.mark.slow

ATOMICSIG = [sys.executable, "-m", "atomicsig"]
ITERATIONS = int(os.environ.get("ATOMICSIG_CRASH_ITERATIONS", "200"))


# ---- shared machinery -------------------------------------------------------------------------------------------


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded RNG per test; the seed is printed (pytest shows it on failure) so a failing run replays."""
    seed = int(os.environ.get("ATOMICSIG_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{request.node.name}: ATOMICSIG_CRASH_SEED={seed} ATOMICSIG_CRASH_ITERATIONS={ITERATIONS}")
    return random.Random(seed)


@pytest.fixture
def child_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for killed children: their own TMPDIR, so throwaway GnuPG homes a SIGKILL leaves behind stay
    inside the test's directory (and their agents can be stopped afterwards)."""
    tmp = tmp_path / "child-tmp"
    tmp.mkdir()
    yield {**os.environ, "TMPDIR": str(tmp)}
    for d in tmp.iterdir():
        subprocess.run(["gpgconf", "--homedir", str(d), "--kill", "all"], capture_output=True, check=False)


def start(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*ATOMICSIG, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)


def kill_at(plan: Sequence[tuple[subprocess.Popen[bytes], float | None]]) -> list[bool]:
    """SIGKILL each process group at its delay (None = let it finish). True per process = it was killed
    (False: it had exited on its own first, i.e. the kill landed after the end)."""
    t0 = time.monotonic()
    for proc, delay in sorted((p for p in plan if p[1] is not None), key=lambda p: p[1] or 0.0):
        assert delay is not None
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    killed = []
    for proc, delay in plan:
        _, err = proc.communicate(timeout=300)
        if delay is None:
            assert proc.returncode == 0, err.decode()
        killed.append(proc.returncode == -signal.SIGKILL)
    return killed


def timed_run(args: Sequence[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run unkilled; returns (seconds, stdout). The runtime is what kill delays are drawn from."""
    t0 = time.monotonic()
    done = subprocess.run([*ATOMICSIG, *args], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode in ok, done.stderr
    return time.monotonic() - t0, done.stdout


def report(title: str, lines: dict[str, Any]) -> None:
    """Figures for the issue (visible with ``pytest -s`` or on failure)."""
    print(f"\n== {title}")
    for k, v in lines.items():
        print(f"   {k}: {v}")


# ---- sigstore audit ---------------------------------------------------------------------------------------------


@dataclass
class StoreAudit:
    """Incremental reader's-eye check of a directory sigstore and its sync journal.

    Invariants (asserted on every :meth:`check`): in every digest directory the ``signature-N`` are numbered
    1..N without a gap; every one is a complete simple-signing message whose payload names that directory's
    digest; nothing else is there except ``.tmp-*`` leftovers; a named file never changes afterwards; every
    complete journal line parses, seqs are consecutive, and every ``add`` names a file holding those bytes.
    """

    root: Path
    files: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # rel -> (inode, size, sha256)
    blobs: dict[str, bytes] = field(default_factory=dict)
    pairs: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unverified: list[str] = field(default_factory=list)
    last_new: list[str] = field(default_factory=list)  # files that appeared in the latest check
    journaled: dict[str, str] = field(default_factory=dict)
    add_lines: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    journal_offset: int = 0
    journal_seq: int = 0
    stray_tmp: set[str] = field(default_factory=set)
    tmp_linked: int = 0  # leftover temp files that are a second name of a complete signature
    torn_journal_tails: int = 0
    recoverable_seen: int = 0  # sum over checks of signatures awaiting their journal line (named by a record)

    def digest_dirs(self) -> Iterator[tuple[str, Path]]:
        for dirpath, dirnames, _ in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".atomicsig"]
            if "@sha256=" in os.path.basename(dirpath):
                yield os.path.relpath(dirpath, self.root), Path(dirpath)

    def check(self) -> int:
        """Assert the invariants; returns the number of signature files that appeared since the last check."""
        self.last_new = []
        for rel_dir, d in self.digest_dirs():
            digest = "sha256:" + rel_dir.rsplit("@sha256=", 1)[1]
            indices = []
            for name in os.listdir(d):
                if name.startswith("signature-"):
                    indices.append(int(name[len("signature-"):]))
                elif name.startswith(".tmp-"):
                    if f"{rel_dir}/{name}" not in self.stray_tmp:
                        self.stray_tmp.add(f"{rel_dir}/{name}")
                        self.tmp_linked += (d / name).stat().st_nlink > 1
                else:
                    raise AssertionError(f"unexpected file {d / name}")
            indices.sort()
            assert indices == list(range(1, len(indices) + 1)), f"gap in {d}: {indices}"
            for n in indices:
                rel = f"{rel_dir}/signature-{n}"
                st = os.stat(d / f"signature-{n}")
                if rel in self.files:
                    assert self.files[rel][:2] == (st.st_ino, st.st_size), f"{rel} changed after it was named"
                    continue
                blob = (d / f"signature-{n}").read_bytes()
                simple_signing_body(blob)
                claimed = payload.parse(openpgp.parse_message(blob).literal)
                assert claimed.manifest_digest == digest, f"{rel} claims {claimed.manifest_digest}"
                self.files[rel] = (st.st_ino, st.st_size, sha256_hex(blob))
                self.blobs[rel] = blob
                self.pairs[(claimed.docker_reference, claimed.manifest_digest)] += 1
                self.unverified.append(rel)
                self.last_new.append(rel)
        self._check_journal()
        return len(self.last_new)

    def _check_journal(self) -> None:
        path = self.root / ".atomicsig" / "journal"
        if not path.exists():
            assert self.journal_offset == 0, "journal disappeared"
            return
        with open(path, "rb") as f:
            if self.journal_offset == 0:
                parse_header(f.read(HEADER_LEN))
                self.journal_offset = HEADER_LEN
            f.seek(self.journal_offset)
            data = f.read()
        end = self.journal_offset
        for line, end in iter_lines(data, self.journal_offset):
            rec = parse_line(line, end)
            assert rec.seq == self.journal_seq + 1, f"journal seq {rec.seq} after {self.journal_seq}"
            assert rec.op == "add", line
            rel = str(rec.path)
            have = self.files.get(rel)
            sha = have[2] if have else sha256_hex((self.root / rel).read_bytes())
            assert sha == rec.sha256, f"journal says {rel} is {rec.sha256}, file is {sha}"
            self.journaled[rel] = rec.sha256
            self.add_lines[(rel, rec.sha256)] += 1
            # Never two lines for one signature, not even right after a kill (issue 11 #3: a rebuild's scan and
            # the writer both journaled it; a reconciler re-reads the journal's view of the directory).
            assert self.add_lines[(rel, rec.sha256)] == 1, f"{rel} journaled twice"
            self.journal_seq = rec.seq
        if end - self.journal_offset < len(data):
            self.torn_journal_tails += 1
        self.journal_offset = end

    def assert_journal_lines_equal_files(self) -> None:
        """Exactly one ``add`` line per signature file (with its bytes) and no other line: none doubled, none
        dropped, none journaled that is not stored."""
        assert self.unjournaled() == []
        assert sum(self.add_lines.values()) == len(self.files), \
            f"{sum(self.add_lines.values())} journal lines for {len(self.files)} files"
        assert set(self.add_lines) == {(rel, f[2]) for rel, f in self.files.items()}

    def unjournaled(self) -> list[str]:
        return sorted(set(self.files) - set(self.journaled))

    def pending_named(self) -> set[tuple[str, str]]:
        """(digest dir, sha256) named by pending records (atomicsig.sync.journal.begin_pending) in the store."""
        d = self.root / ".atomicsig" / "pending"
        out = set()
        for p in d.iterdir() if d.is_dir() else []:
            for line in p.read_bytes().decode("ascii").strip().splitlines():  # a batch's record: a line each
                sigdir, sha = line.split(" ")
                out.add((sigdir, sha))
        return out

    def check_recoverable(self) -> int:
        """Assert every signature missing from the journal is named by a pending record (so the next writer
        journals it); returns how many such signatures there are now."""
        missing = self.unjournaled()
        if missing:
            named = self.pending_named()
            lost = [rel for rel in missing if (rel.rsplit("/", 1)[0], self.files[rel][2]) not in named]
            assert not lost, f"signatures neither journaled nor in a pending record: {lost[:5]}"
            self.recoverable_seen += len(missing)
        return len(missing)

    def verify_new(self, keys: TrustedKeys, fingerprint: str) -> int:
        """Cryptographically verify every file not verified yet (gpg, like a node would)."""
        todo, self.unverified = self.unverified, []

        def one(rel: str) -> None:
            assert keys.verify(self.blobs[rel]).signer == fingerprint.upper(), rel
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(one, todo))
        return len(todo)

    def by_dir(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = collections.defaultdict(list)
        for rel, blob in self.blobs.items():
            out[rel.rsplit("/", 1)[0]].append(blob)
        return out


# ---- sign -------------------------------------------------------------------------------------------------------

POOL = 300  # digests
NEW_PER_RUN = 10  # never-signed identities per process
REPEATS_PER_RUN = 40  # identities signed (or attempted) before


def _digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"crash-{i}".encode()).hexdigest()


def _ref(i: int, tag: str) -> str:
    return f"example.com/crash/app{i % 5}:{tag}@{_digest(i)}"


def _pair(ref: str) -> tuple[str, str]:
    ident, digest = ref.split("@", 1)
    return ident, digest


def test_sign_survives_sigkill(tmp_path: Path, rng: random.Random, signer: GpgHome, signer_pub: Path) -> None:
    store = tmp_path / "sigstore"
    audit = StoreAudit(store)
    attempted: list[str] = []
    attempted_set: set[str] = set()
    raced: set[tuple[str, str]] = set()  # identities two processes signed at the same time

    def refs_file(name: str, refs: list[str]) -> Path:
        p = tmp_path / f"{name}.txt"
        p.write_text("\n".join(refs) + "\n")
        for r in refs:
            if r not in attempted_set:
                attempted_set.add(r)
                attempted.append(r)
        return p

    def sign_args(p: Path) -> list[str]:
        return ["sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore", str(store),
                "--from-file", str(p), "--json"]

    def batch(tag: str, digests: list[int]) -> list[str]:
        return [_ref(i, tag) for i in digests] + rng.sample(attempted, min(REPEATS_PER_RUN, len(attempted)))

    # Unkilled runs: populate, then measure a typical batch.
    timed_run(sign_args(refs_file("warm", [_ref(i, "warm") for i in range(POOL)])))
    measure = refs_file("measure", batch("m", rng.sample(range(POOL), NEW_PER_RUN)))
    # Kill delays are uniform over [most of the time before the first gpg call, end of an unkilled run]: the
    # dry run does everything but load the key, sign and write.
    lo = 0.8 * timed_run([*sign_args(measure), "--dry-run"], ok=(1,))[0]  # 1: something to sign
    runtime, _ = timed_run(sign_args(measure))
    audit.check()
    keys = TrustedKeys([signer_pub.read_bytes()])
    verified = audit.verify_new(keys, signer.fingerprint)
    points: collections.Counter[str] = collections.Counter()
    races = 0
    t_start = time.monotonic()
    for it in range(ITERATIONS):
        if it and it % 50 == 0:  # runs slow down as directories fill up: measure again, unkilled
            runtime, _ = timed_run(sign_args(refs_file(f"measure{it}", batch(f"m{it}", rng.sample(range(POOL),
                                                                                               NEW_PER_RUN)))))
            audit.check()
        before = audit.pairs.copy()
        digests = rng.sample(range(POOL), NEW_PER_RUN)
        first = batch(f"r{it}", digests)
        plan: list[tuple[subprocess.Popen[bytes], float | None]] = []
        if it % 4 == 3:  # two signers racing into the same digest directories
            races += 1
            overlap = first[:4]  # the same identities: both may sign them
            second = [_ref(i, f"r{it}x") for i in digests] + overlap + batch(f"r{it}y", [])[:20]
            raced.update(_pair(r) for r in overlap)
            who = rng.choice(["first", "second", "both"])
            p1, p2 = refs_file(f"b{it}a", first), refs_file(f"b{it}b", second)
            plan = [(start(sign_args(p1)), rng.uniform(lo, runtime) if who != "second" else None),
                    (start(sign_args(p2)), rng.uniform(lo, runtime) if who != "first" else None)]
            wanted = {_pair(r) for r in first + second}
        else:
            p1 = refs_file(f"b{it}", first)
            plan = [(start(sign_args(p1)), rng.uniform(lo, runtime))]
            wanted = {_pair(r) for r in first}
        killed = kill_at(plan)
        audit.check()
        audit.check_recoverable()
        missing_before = {p for p in wanted if not before[p]}
        done = {p for p in missing_before if audit.pairs[p]}
        if not any(killed):
            points["after the end (not killed)"] += 1
        elif not done:
            points["before the first new signature"] += 1
        elif done == missing_before:
            points["after the last new signature"] += 1
        else:
            points["while writing signatures"] += 1
        if it % 20 == 19:
            verified += audit.verify_new(keys, signer.fingerprint)
    kill_seconds = time.monotonic() - t_start

    # Re-run everything unkilled: every identity ends up signed, exactly once unless two signers raced on it.
    _, out = timed_run(sign_args(refs_file("final", attempted)))
    summary = json.loads(out)["summary"]
    audit.check()
    verified += audit.verify_new(keys, signer.fingerprint)
    keys.close()
    assert summary["failed"] == 0
    wanted_all = {_pair(r) for r in attempted}
    assert {p for p in wanted_all if not audit.pairs[p]} == set()
    duplicated = {p for p, n in audit.pairs.items() if n > 1}
    # One key: no identity signed twice, not even by two signers racing on it (append_unless re-checks under a
    # lock on the digest directory).
    assert not duplicated, sorted(duplicated)[:5]
    assert set(audit.pairs) == wanted_all
    _, out = timed_run(sign_args(refs_file("again", attempted)))
    again = json.loads(out)["summary"]
    assert again == {"signed": 0, "exists": len(attempted), "failed": 0}
    assert audit.check() == 0
    unjournaled = audit.unjournaled()
    report("sign", {"kills": ITERATIONS, "racing iterations": races, "identities raced on": len(raced),
                    "seconds (kill loop)": round(kill_seconds, 1),
                    "kill window (s, last)": f"{lo:.2f}..{runtime:.2f}",
                    "kill points": dict(points), "signatures": len(audit.files), "identities": len(wanted_all),
                    "gpg-verified": verified, "final re-run": summary, "duplicates from races": len(duplicated),
                    "stray .tmp files": len(audit.stray_tmp), "of which hard links of a signature": audit.tmp_linked,
                    ".tmp files left at the end (swept once stale)": len(list(store.rglob(".tmp-*"))),
                    "torn journal tails seen": audit.torn_journal_tails,
                    "unjournaled after kills, named by a pending record (sum)": audit.recoverable_seen,
                    "files missing from journal after the final run": len(unjournaled),
                    "journal lines / files": f"{sum(audit.add_lines.values())} / {len(audit.files)}"})
    # The journal may lag the files right after a kill (named by a pending record then, checked after every
    # kill), but the next run finishes those lines: in the end every file is journaled, exactly once.
    assert unjournaled == []
    audit.assert_journal_lines_equal_files()


# ---- policy apply -----------------------------------------------------------------------------------------------

POLICY = "etc/containers/policy.json"
REGD = "etc/containers/registries.d"
KEYDIR = "etc/pki/containers"
STATE = "var/lib/atomicsig/policy-state.json"
TEAMS = 40


def _policy_yaml(variant: str) -> str:
    """Policy A or B: 40 shared scopes with other sigstores, one scope each only has, a key whose content changes
    under the same key name (prod: so its keyring gets a new file name), and one key set each only has
    (ops / rel)."""
    extra_key = "ops" if variant == "a" else "rel"
    lines = ["default: reject", "keys:", f"  prod: {{file: keys-{variant}/prod.gpg}}",
             f"  {extra_key}: {{file: keys-{variant}/{extra_key}.gpg}}", "scopes:"]
    for i in range(TEAMS):
        keys = f"[prod, {extra_key}]" if i % 3 == 0 else "prod"
        lines.append(f"  registry{i % 4}.example.com/team{i}: {{signed-by: {keys}, "
                     f"lookaside: 'https://sigs-{variant}.example.com/s{i}'}}")
    lines.append(f"  only-{variant}.example.com/app: {{signed-by: {extra_key}, "
                 f"lookaside: 'https://only-{variant}.example.com/sigs'}}")
    lines.append("  docker.io/library: {action: accept}")
    return "\n".join(lines) + "\n"


UNMANAGED_POLICY: dict[str, Any] = {"default": [{"type": "insecureAcceptAnything"}],
                    "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
                                   "docker": {"unmanaged.example.com": [{"type": "reject"}]},
                                   "atomic": {"atomic.example.com/x": [{"type": "reject"}]}}}
UNMANAGED_FILES = {f"{REGD}/default.yaml": b"default-docker:\n  lookaside: file:///var/lib/containers/sigstore\n",
                   f"{REGD}/unmanaged.yaml": b"docker:\n  unmanaged.example.com:\n    lookaside: https://u.example\n",
                   f"{REGD}/README": b"not a yaml file\n"}


def _init_node(root: Path) -> None:
    for rel, data in UNMANAGED_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / POLICY).write_text(json.dumps(UNMANAGED_POLICY, indent=2))


def _managed_snapshot(root: Path) -> dict[str, bytes]:
    """Every file except backups, staged files and temp leftovers (what a node reads, plus the state record)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and ".atomicsig-bak." not in p.name and not p.name.startswith(".tmp-") and \
                not p.name.endswith(policy_apply.STAGING_SUFFIX):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@dataclass
class Variant:
    spec: Any
    keys: Any
    yaml: Path
    snap: dict[str, bytes] = field(default_factory=dict)

    def converge(self, root: Path) -> None:
        plan = policy_apply.plan(self.spec, self.keys, root)
        if plan.pending:
            policy_apply.execute(plan)


def test_policy_apply_survives_sigkill(tmp_path: Path, rng: random.Random, signer_pub: Path,
                                       other_signer: GpgHome, child_env: dict[str, str]) -> None:
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    for v, files in {"a": {"prod": [signer_pub], "ops": [other_pub]},
                     "b": {"prod": [signer_pub, other_pub], "rel": [other_pub]}}.items():
        (tmp_path / f"keys-{v}").mkdir()
        for name, parts in files.items():
            (tmp_path / f"keys-{v}" / f"{name}.gpg").write_bytes(b"".join(p.read_bytes() for p in parts))
        (tmp_path / f"{v}.yaml").write_text(_policy_yaml(v))
    variants: dict[str, Variant] = {}
    for v in ("a", "b"):
        spec = schema.load(str(tmp_path / f"{v}.yaml"))
        variants[v] = Variant(spec, keymaterial.resolve(spec, None), tmp_path / f"{v}.yaml")
    a, b = variants["a"], variants["b"]

    # The A and B versions of every file, from a reference node that went A → B → A.
    ref = tmp_path / "ref"
    _init_node(ref)
    a.converge(ref)
    b.converge(ref)
    b.snap = _managed_snapshot(ref)
    a.converge(ref)
    a.snap = _managed_snapshot(ref)
    assert {k: v for k, v in a.snap.items() if k.startswith(REGD) and k.endswith(".yaml")} != {}
    paths = sorted(set(a.snap) | set(b.snap))
    differing = [p for p in paths if a.snap.get(p) != b.snap.get(p)]
    assert any(p.startswith(KEYDIR) for p in differing) and POLICY in differing and STATE in differing

    root = tmp_path / "node"
    _init_node(root)
    for step in (a, b, a):
        step.converge(root)
    assert _managed_snapshot(root) == a.snap
    for p in root.rglob("*.atomicsig-bak.*"):  # of the hand-written initial files; from here on only A or B
        p.unlink()

    def apply_args(v: Variant, *extra: str) -> list[str]:
        return ["policy", "apply", "-f", str(v.yaml), "--root", str(root), *extra]

    # Kill delays: uniform over [most of the read-only planning time, end of an unkilled apply], so that kills
    # land in the write phase rather than in interpreter start-up and key loading.
    def window() -> tuple[float, float]:
        """Measured now, because the machine's load (other jobs) changes the runtime severalfold."""
        plan_time = min(_time_check(apply_args(b), child_env) for _ in range(2))
        write_time = [timed_run(apply_args(step), child_env)[0] for step in (b, a)]
        return 0.9 * plan_time, min(write_time)  # min: the write phase is short, most of a longer run is exit
    points: collections.Counter[str] = collections.Counter()
    stray: set[str] = set()
    t_start = time.monotonic()
    for it in range(ITERATIONS):
        if it % 50 == 0:
            lo, hi = window()
            _drop_backups(root, a, b)
        old, new = (a, b) if it % 2 == 0 else (b, a)
        proc = start(apply_args(new), child_env)
        killed = kill_at([(proc, rng.uniform(lo, hi))])[0]
        state = _check_node(root, old, new, stray)
        points[state if killed else "after the end (not killed)"] += 1
        # Roll forward: one re-run reaches exactly the target, a second one has nothing to write.
        new.converge(root)
        assert _managed_snapshot(root) == new.snap
        assert not policy_apply.plan(new.spec, new.keys, root).pending
        _drop_backups(root, a, b)
    kill_seconds = time.monotonic() - t_start
    report("policy apply", {"kills": ITERATIONS, "seconds (kill loop)": round(kill_seconds, 1),
                            "kill window (s)": f"{lo:.2f}..{hi:.2f}", "kill points": dict(points),
                            "kills between the two renames": points["between the registries.d and the policy.json "
                                                                    "rename"],
                            "distinct stray .tmp and staged files": len(stray),
                            "leftover temp GnuPG homes": len(os.listdir(child_env["TMPDIR"]))})


def _time_check(args: list[str], env: dict[str, str]) -> float:
    """Runtime of ``--check`` (everything an apply does before its first write; exits 1 with changes pending)."""
    t0 = time.monotonic()
    done = subprocess.run([*ATOMICSIG, *args, "--check"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode in (0, 1), done.stderr
    return time.monotonic() - t0


def _check_node(root: Path, old: Variant, new: Variant, stray: set[str]) -> str:
    """Assert what a node reads after a kill is sound; classify it as before / between the renames / after."""
    snap = _managed_snapshot(root)
    for tmp in root.rglob(".tmp-*"):
        stray.add(str(tmp.relative_to(root)))
        assert not tmp.name.endswith(".yaml")
    for staged in root.rglob(f"*{policy_apply.STAGING_SUFFIX}"):  # complete, and the version being applied
        rel = str(staged.relative_to(root))[:-len(policy_apply.STAGING_SUFFIX)]
        assert staged.read_bytes() == new.snap[rel], rel
        stray.add(str(staged.relative_to(root)))
    for p in sorted(set(snap) | set(old.snap) | set(new.snap)):
        assert snap.get(p) in (old.snap.get(p), new.snap.get(p)) or p == STATE, f"{p} is neither version"
    # Unmanaged files and policy.json entries are intact.
    for rel, data in UNMANAGED_FILES.items():
        assert snap[rel] == data
    doc = policyjson.loads(snap[POLICY], POLICY)
    assert policyjson.problems(doc) == []
    for transport in ("docker-daemon", "atomic"):
        assert doc["transports"][transport] == UNMANAGED_POLICY["transports"][transport]
    assert doc["transports"]["docker"]["unmanaged.example.com"] == [{"type": "reject"}]
    cfg = registries_d.load_dir(root / REGD)  # parses every *.yaml, refuses a scope defined twice
    assert cfg.docker["unmanaged.example.com"].source.endswith("unmanaged.yaml")
    # Every keyring policy.json points at exists and is one complete version of itself.
    referenced = set()
    for reqs in doc["transports"]["docker"].values():
        for req in reqs:
            if "keyPath" in req:
                rel = req["keyPath"].lstrip("/")
                referenced.add(rel)
                assert rel in snap and snap[rel] in (old.snap.get(rel), new.snap.get(rel))
                openpgp.packets(snap[rel])
    # The state record parses and claims at most what either policy owns (the intent record is the union).
    state = json.loads(snap[STATE])
    owned = set(json.loads(old.snap[STATE])["files"]) | set(json.loads(new.snap[STATE])["files"])
    assert set(state["files"]) <= owned

    # A node's trust decision = policy.json + the keyrings it names: all old or all new after every kill (keyrings
    # are content-addressed, so the policy.json rename is the single commit point). Keyrings nobody references
    # (written ahead, or not yet removed) are read by nobody and left out of the verdict.
    def version(paths: set[str]) -> str | None:
        for name, v in (("old", old), ("new", new)):
            if all(snap.get(p) == v.snap.get(p) for p in paths):
                return name
        return None
    trust = version({POLICY} | referenced)
    assert trust is not None, "policy.json and the keyrings it names mix the old and the new policy"
    # registries.d (every *.yaml) switches with one rename just before policy.json: never new trust with old
    # lookasides, and old trust with new lookasides only if the kill landed between the two renames.
    regd = version({p for p in set(old.snap) | set(new.snap) if p.startswith(REGD) and p.endswith(".yaml")})
    assert regd is not None, "registries.d mixes the old and the new policy"
    if trust == "new":
        assert regd == "new", "new policy.json with the old registries.d"
        return "node reads all new" + ("" if snap == new.snap else " (cleanup/state pending)")
    return "between the registries.d and the policy.json rename" if regd == "new" else \
        "before any file a node reads changed"


def _drop_backups(root: Path, a: Variant, b: Variant) -> None:
    """Backups are complete copies of an A or B version (checked), then removed to keep directories small."""
    for p in root.rglob("*.atomicsig-bak.*"):
        base = str(p.relative_to(root)).split(".atomicsig-bak.", 1)[0]
        assert p.read_bytes() in (a.snap.get(base), b.snap.get(base)), p
        p.unlink()


# ---- sync -------------------------------------------------------------------------------------------------------

SOURCE_INITIAL = 1200  # signatures on the first source before the first kill
SOURCE_PER_RUN = 4  # more on the first source before each follower run
SECOND_PER_RUN = 2  # signatures arriving on the second source *while* every other follower run is going on


serve = serve_sigstore  # the shared helper in tests/infra.py


class Signatures:
    """Pre-made signatures, up front, so the kill loop spends no time signing.

    Made with atomicsig's in-process memory signer (the key exported from the gpg home once), not a gpg process
    per signature: ~2,300 gpg signatures cost ~20 s of the CI run's longest test, and what is under test here is
    the follower's disk after a kill, not who signed. The follower verifies every one it stores, and a sample is
    verified with gpg at the end."""

    def __init__(self, home: GpgHome, specs: list[tuple[str, str]]) -> None:
        signer = memory_signer(Keyring(str(home.path)), home.fingerprint, None)
        self.items = [(ident, digest, signer.sign(payload.build(ident, digest))) for ident, digest in specs]

    def take(self, n: int) -> list[tuple[str, str, bytes]]:
        out, self.items = self.items[:n], self.items[n:]
        return out


def _add(store: Path, items: list[tuple[str, str, bytes]]) -> None:
    """Sign "on the source node": through DirectoryStore.append, which also writes the journal line."""
    s = DirectoryStore(store)
    for ident, digest, blob in items:
        s.append(parse_ref(ident), digest, blob)


def test_sync_survives_sigkill(tmp_path: Path, rng: random.Random, signer: GpgHome, signer_pub: Path,
                               child_env: dict[str, str]) -> None:
    src1, src2, follower = tmp_path / "src1", tmp_path / "src2", tmp_path / "follower"
    for d in (src1, src2, follower):
        d.mkdir()
    Journal(src2).rebuild()  # an empty node still serves a (header-only) journal
    digests = [_digest(i) for i in range(600)]
    n1 = SOURCE_INITIAL + SOURCE_PER_RUN * (ITERATIONS + ITERATIONS // 25)
    first = Signatures(signer, [(f"example.com/sync/app{i % 3}:v{i}", digests[i % 600]) for i in range(n1)])
    # The second source signs other identities, half into digest directories the first source also fills.
    n2 = SECOND_PER_RUN * ((ITERATIONS + 1) // 2)
    second = Signatures(signer, [(f"example.com/sync/app{i % 3}:s{i}", _digest(i * 7 if i % 2 else 1000 + i))
                                 for i in range(n2)])
    audit = StoreAudit(follower)
    published: dict[str, set[str]] = collections.defaultdict(set)  # digest dir -> sha256 of what sources hold

    def add(store: Path, items: list[tuple[str, str, bytes]]) -> None:
        _add(store, items)
        for ident, digest, blob in items:
            published[digest_dirname(parse_ref(ident).path, digest)].add(sha256_hex(blob))
    with serve(src1) as url1, serve(src2) as url2:
        cfg = tmp_path / "sync.yaml"
        cfg.write_text(yaml.safe_dump({"sigstore": str(follower), "sources": [{"url": url1}, {"url": url2}],
                                       "trusted-keys": [str(signer_pub)], "interval": 1}))
        args = ["sync", "--once", "--config", str(cfg)]
        add(src1, first.take(30))
        runtime, _ = timed_run(args, child_env)  # a small pass: start-up, two journals, 30 verified signatures
        # Kill delays are uniform over [most of an idle pass (start-up, keys, journal requests), runtime].
        lo = 0.8 * timed_run(args, child_env)[0]
        add(src1, first.take(SOURCE_INITIAL - 30))
        audit.check()
        points: collections.Counter[str] = collections.Counter()
        t_start = time.monotonic()
        for it in range(ITERATIONS):
            add(src1, first.take(SOURCE_PER_RUN))
            if it % 25 == 24 and sum(len(v) for v in published.values()) - len(audit.files) < 50:
                # Caught up: measure a typical pass and an idle one again, unkilled (load changes runtimes).
                runtime = timed_run(args, child_env)[0]
                lo = 0.8 * timed_run(args, child_env)[0]
                audit.check()
                add(src1, first.take(SOURCE_PER_RUN))
            before = len(audit.files)
            delay = rng.uniform(lo, runtime)
            arriving = second.take(SECOND_PER_RUN) if it % 2 else []
            feeder = threading.Thread(target=_trickle, args=(add, src2, arriving, delay, rng.random()))
            proc = start(args, child_env)
            feeder.start()
            killed = kill_at([(proc, delay)])[0]
            feeder.join()
            created = audit.check()
            audit.check_recoverable()
            SyncState.load(follower / ".atomicsig" / "sync-state.json")  # the cursor file parses
            for rel in audit.last_new:  # only bytes some source published, under the same digest directory
                assert audit.files[rel][2] in published[rel.rsplit("/", 1)[0]], rel
            caught_up = len(audit.files) == sum(len(v) for v in published.values())
            if not killed:
                points["after the end (not killed)"] += 1
            elif created == 0:
                points["before the first new signature"] += 1
            elif caught_up:
                points["after the last new signature"] += 1
            else:
                points["while writing signatures"] += 1
            assert before + created == len(audit.files)
        kill_seconds = time.monotonic() - t_start
        backlog = sum(len(v) for v in published.values()) - len(audit.files)
        final, _ = timed_run(args, child_env)
    audit.check()
    source_audits = [StoreAudit(src1), StoreAudit(src2)]
    for sa in source_audits:
        sa.check()
    union = _union(source_audits)
    assert {d: {sha256_hex(b) for b in blobs} for d, blobs in union.items()} == published
    mine = audit.by_dir()
    assert {d: sorted(b) for d, b in union.items()} == {d: sorted(set(mine.get(d, []))) for d in union}
    assert all(len(b) == len(set(b)) for b in mine.values()), "the same bytes stored twice in one directory"
    assert set(mine) <= set(union)
    keys = TrustedKeys([signer_pub.read_bytes()])
    sample = rng.sample(audit.unverified, min(200, len(audit.unverified)))
    audit.unverified = sample
    verified = audit.verify_new(keys, signer.fingerprint)
    keys.close()
    report("sync", {"kills": ITERATIONS, "seconds (kill loop)": round(kill_seconds, 1),
                    "kill window (s)": f"{lo:.2f}..{runtime:.2f}", "kill points": dict(points),
                    "source signatures": sum(len(b) for b in union.values()),
                    "backlog before the final run": backlog, "final run (s)": round(final, 1),
                    "gpg-verified sample": verified, "stray .tmp files": len(audit.stray_tmp),
                    ".tmp files left at the end (swept once stale)": len(list(follower.rglob(".tmp-*"))),
                    "torn journal tails seen": audit.torn_journal_tails,
                    "unjournaled after kills, named by a pending record (sum)": audit.recoverable_seen,
                    "files missing from the follower's journal after the final run": len(audit.unjournaled()),
                    "follower journal lines / files": f"{sum(audit.add_lines.values())} / {len(audit.files)}",
                    "leftover ephemeral GnuPG homes": len(os.listdir(child_env["TMPDIR"]))})
    assert audit.unjournaled() == []  # the final pass journaled what kills left to pending records
    audit.assert_journal_lines_equal_files()
    for sa in source_audits:
        sa.assert_journal_lines_equal_files()


def _trickle(add: Any, store: Path, items: list[tuple[str, str, bytes]], within: float, skew: float) -> None:
    """Add ``items`` to a source while the follower runs, spread over the first ``within`` seconds."""
    for k, item in enumerate(items):
        time.sleep(within * skew / max(1, len(items)) if k == 0 else within * (1 - skew) / len(items))
        add(store, [item])


def _union(audits: list[StoreAudit]) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = collections.defaultdict(set)
    for a in audits:
        for d, blobs in a.by_dir().items():
            out[d] |= set(blobs)
    return out
