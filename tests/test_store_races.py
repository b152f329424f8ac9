"""Concurrent writers of one sigstore directory (issue 11 #3, issue 12 #1, #2, #3, #11): no signature is lost,
doubled or left unjournaled, whoever writes — ``sign``, serve's PUT, sync intake, ``prune``, a peer's delete,
``index``.

Everything is real: gpg-made signatures, ``atomicsig sign`` / ``serve`` / ``sync`` / ``prune`` / ``index``, real
files. The store check (:func:`assert_consistent`) is the reader's and the follower's view at once: every digest
directory is ``signature-1 … signature-n`` without a gap, holds identical bytes at most once, and replaying the
journal (``add i s`` puts bytes s at index i and nowhere else, ``del i s`` removes bytes s) gives exactly its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from atomicsig.format import payload
from atomicsig.format.extension_wire import encode_entry
from atomicsig.format.reference import parse as parse_ref
from atomicsig.format.sigpath import digest_dirname
from atomicsig.gnupg.keyring import Keyring
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import HEADER_LEN, PENDING_NAME, Journal, iter_lines, parse_header, parse_line, sha256_hex
from atomicsig.store.prune import prune_keys, remove_matching
from atomicsig.store.sigdir import read_dir
from tests.infra import GpgHome, serve_sigstore

ATOMICSIG = [sys.executable, "-m", "atomicsig"]
TOKEN = "store-race-token-" + "t" * 20
REPO = "ns/app"


def digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"store-races-{i}".encode()).hexdigest()


def make_sigs(home: GpgHome, specs: list[tuple[str, str]]) -> list[tuple[str, str, bytes]]:
    """(identity, digest, blob) per spec, signed by gpg (4 at a time)."""
    kr = Keyring(str(home.path))

    def one(spec: tuple[str, str]) -> tuple[str, str, bytes]:
        return spec[0], spec[1], kr.sign(payload.build(spec[0], spec[1]), home.fingerprint, None)
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, specs))


# ---- the store check -------------------------------------------------------------------------------------------


def store_files(root: Path) -> dict[str, dict[int, str]]:
    """digest dir → {index: sha256}; asserts no gap and no repeated bytes in any directory."""
    out: dict[str, dict[int, str]] = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".atomicsig"]
        if "@sha256=" not in os.path.basename(dirpath):
            continue
        rel = os.path.relpath(dirpath, root)
        indices = sorted(int(n[len("signature-"):]) for n in names if n.startswith("signature-"))
        assert indices == list(range(1, len(indices) + 1)), f"gap in {rel}: {indices}"
        files = {s.index: sha256_hex(s.blob) for s in read_dir(Path(dirpath))}
        assert len(set(files.values())) == len(files), f"the same bytes twice in {rel}"
        out[rel] = files
    return out


def journal_records(root: Path) -> list[tuple[str, str, int, str]]:
    """(op, digest dir, index, sha256) of every record; asserts the header and consecutive seqs."""
    data = (root / ".atomicsig" / "journal").read_bytes()
    parse_header(data)
    out, seq = [], 0
    for line, end in iter_lines(data[HEADER_LEN:], HEADER_LEN):
        rec = parse_line(line, end)
        assert rec.seq == seq + 1, f"seq {rec.seq} after {seq}"
        seq = rec.seq
        out.append((rec.op, rec.path.dirname, rec.path.index, rec.sha256))
    return out


def journal_view(root: Path) -> dict[str, dict[int, str]]:
    view: dict[str, dict[int, str]] = {}
    for op, d, i, sha in journal_records(root):
        files = view.setdefault(d, {})
        for j in [j for j, s in files.items() if s == sha]:
            del files[j]
        if op == "add":
            files[i] = sha
    return view


def assert_consistent(root: Path) -> dict[str, dict[int, str]]:
    """The store check of the module docstring; returns the files."""
    files = store_files(root)
    view = journal_view(root)
    for d in sorted(set(files) | set(view)):
        assert files.get(d, {}) == view.get(d, {}), f"journal and files differ in {d}"
    return files


def present(files: dict[str, dict[int, str]], ident: str, dig: str, blob: bytes) -> int:
    """How many times ``blob`` is stored in its digest directory."""
    d = digest_dirname(parse_ref(ident).path, dig)
    return list(files.get(d, {}).values()).count(sha256_hex(blob))


# ---- serve PUT helpers -----------------------------------------------------------------------------------------


def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


def put(url: str, ident: str, dig: str, blob: bytes) -> int:
    body = encode_entry(f"{dig}@{sha256_hex(blob)[:32]}", blob)
    r = requests.put(f"{url}/extensions/v2/{parse_ref(ident).path}/signatures/{dig}", json=body,
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return r.status_code


def put_all(url: str, sigs: list[tuple[str, str, bytes]], *, pace: float = 0.0) -> list[int]:
    """PUT every signature from 6 threads (``pace`` seconds between one thread's requests)."""
    def one(item: tuple[str, str, bytes]) -> int:
        code = put(url, *item)
        time.sleep(pace)
        return code
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, sigs))


@contextlib.contextmanager
def looping(fn: Callable[[], None]) -> Iterator[Callable[[], int]]:
    """Run ``fn`` in a thread until the block ends; yields a function returning the number of completed runs.
    An exception in ``fn`` fails the test after the block."""
    stop = threading.Event()
    runs = [0]
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                fn()
                runs[0] += 1
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
    t = threading.Thread(target=loop)
    t.start()
    try:
        yield lambda: runs[0]
    finally:
        stop.set()
        t.join(timeout=120)
    if errors:
        raise errors[0]


# ---- issue 11 #3: one journal line per signature under parallel signing ----------------------------------------


@pytest.mark.slow
def test_parallel_sign_journals_each_signature_once(tmp_path: Path, signer: GpgHome) -> None:
    """``sign --from-file`` of 200 references with -j 8 into a fresh store: 200 files, 200 ``add`` lines, no
    pending record left. Before the fix the first appends raced the journal's creation (its scan listed files
    whose writers then added their own line): 201–203 lines and 8 slot files left. Probabilistic, so 3 runs."""
    refs = tmp_path / "refs.txt"
    refs.write_text("".join(f"example.com/par/app{i % 5}:v{i}@{digest(i)}\n" for i in range(200)))
    for run in range(3):
        store = tmp_path / f"store{run}"
        done = subprocess.run([*ATOMICSIG, "sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path),
                               "--sigstore", str(store), "--from-file", str(refs), "-j", "8", "--json"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        files = assert_consistent(store)
        records = journal_records(store)
        assert sum(len(f) for f in files.values()) == 200
        assert len(records) == 200 and all(op == "add" for op, *_ in records)
        assert len(set(records)) == 200, f"run {run}: a signature journaled twice"
        assert os.listdir(store / ".atomicsig" / PENDING_NAME) == [], f"run {run}: pending records left"


# ---- issue 12 #1: prune while serve takes PUTs --------------------------------------------------------------------


@pytest.mark.slow
def test_prune_during_puts_loses_nothing(tmp_path: Path, signer: GpgHome, signer_pub: Path,
                                         other_signer: GpgHome) -> None:
    """80 trusted signatures PUT to ``atomicsig serve`` into 4 digest directories while ``prune`` of another key
    (whose signatures keep being added to the same directories) runs in a loop. Before the fix prune swapped in a
    directory rebuilt from a snapshot and lost what was linked meanwhile (6 of 80 in the issue)."""
    store = tmp_path / "store"
    store.mkdir()
    good = make_sigs(signer, [(f"example.com/{REPO}:v{i}", digest(i % 4)) for i in range(80)])
    retired = make_sigs(other_signer, [(f"example.com/{REPO}:old{i}", digest(i % 4)) for i in range(8)])
    local = DirectoryStore(store)

    def plant_and_prune() -> None:
        for ident, dig, blob in retired:
            local.append(parse_ref(ident), dig, blob)
        prune_keys(store, {other_signer.fingerprint})
    with serve_sigstore(store, "--token-file", str(token_file(tmp_path)), "--trusted-key", str(signer_pub)) as url:
        with looping(plant_and_prune) as runs:
            codes = put_all(url, good, pace=0.15)
        prunes = runs()
    assert codes == [201] * len(good)
    assert prunes >= 5, "prune hardly overlapped the uploads"
    prune_keys(store, {other_signer.fingerprint})
    files = store_files(store)
    lost = [ident for ident, dig, blob in good if present(files, ident, dig, blob) != 1]
    assert lost == [], f"{len(lost)} of {len(good)} uploads answered 201 are gone ({prunes} prunes ran)"
    assert sum(len(f) for f in files.values()) == len(good)
    assert assert_consistent(store) == files


# ---- issue 12 #2: a peer's deletes while serve takes PUTs ---------------------------------------------------------


def sync_config(path: Path, store: Path, sources: list[str], keys: list[Path]) -> Path:
    path.write_text(yaml.safe_dump({"sigstore": str(store), "sources": [{"url": u} for u in sources],
                                    "trusted-keys": [str(k) for k in keys], "interval": 1,
                                    "propagate-deletes": True}))
    return path


def sync_once(cli: Any, config: Path) -> dict[str, Any]:
    code, out, err = cli("sync", "--config", str(config), "--once")
    assert code == 0, out + err
    return json.loads((Path(yaml.safe_load(config.read_text())["sigstore"]) / ".atomicsig" /
                       "sync-state.json").read_text())


@pytest.mark.slow
def test_peer_deletes_during_puts_lose_nothing(cli: Any, tmp_path: Path, signer: GpgHome, signer_pub: Path,
                                               other_signer: GpgHome) -> None:
    """A follower with ``propagate-deletes: true`` applies a peer's ``del`` records (the peer pruned a retired
    key) while 80 uploads arrive through its own ``atomicsig serve``. Before the fix ``remove_blob`` read the
    directory before taking the lock and rewrote it from that read (14 of 80 lost in the issue)."""
    src, fol = tmp_path / "src", tmp_path / "fol"
    src.mkdir()
    fol.mkdir()
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    good = make_sigs(signer, [(f"example.com/{REPO}:v{i}", digest(i % 4)) for i in range(80)])
    retired = make_sigs(other_signer, [(f"example.com/{REPO}:old{i}", digest(i % 4)) for i in range(40)])
    rounds = [retired[k:k + 8] for k in range(0, len(retired), 8)]
    deleted = 0
    with serve_sigstore(src) as src_url, \
            serve_sigstore(fol, "--token-file", str(token_file(tmp_path)), "--trusted-key", str(signer_pub)) as url:
        cfg = sync_config(tmp_path / "sync.yaml", fol, [src_url], [signer_pub, other_pub])
        for batch in rounds:  # the follower holds them, delivered by src
            for ident, dig, blob in batch:
                DirectoryStore(src).append(parse_ref(ident), dig, blob)
        sync_once(cli, cfg)
        with ThreadPoolExecutor(1) as pool:
            uploads = pool.submit(put_all, url, good, pace=0.05)
            for batch in rounds:  # src retires them batch by batch; each follower pass applies 8 deletes
                gone = {blob for _, _, blob in batch}
                assert len(remove_matching(src, gone.__contains__).removed) == len(batch)
                deleted = sync_once(cli, cfg)["sources"][src_url]["deleted"]
            codes = uploads.result()
    assert codes == [201] * len(good)
    assert deleted == len(retired)
    files = store_files(fol)
    lost = [ident for ident, dig, blob in good if present(files, ident, dig, blob) != 1]
    assert lost == [], f"{len(lost)} of {len(good)} uploads answered 201 are gone"
    assert sum(len(f) for f in files.values()) == len(good)
    assert assert_consistent(fol) == files


# ---- issue 12 #3: digests other than sha256 are refused before anything is stored --------------------------------


def test_put_of_a_sha512_digest_is_refused_and_stores_nothing(tmp_path: Path, signer: GpgHome) -> None:
    """Before: 500, but the signature was stored and never journaled, and a retry got 409."""
    store = tmp_path / "store"
    DirectoryStore(store).append_path(REPO, digest(1), b"\xa3seed")  # a store with a journal
    before = (store / ".atomicsig" / "journal").read_bytes()
    for algo, n in (("sha512", 128), ("sha384", 96)):
        dig = f"{algo}:" + "ab" * (n // 2)
        blob = make_sigs(signer, [(f"example.com/{REPO}:x", dig)])[0][2]
        with serve_sigstore(store, "--token-file", str(token_file(tmp_path))) as url:
            body = encode_entry(f"{dig}@{sha256_hex(blob)[:32]}", blob)
            for _attempt in range(2):  # a retry gets the same answer
                r = requests.put(f"{url}/extensions/v2/{REPO}/signatures/{dig}", json=body,
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
                assert r.status_code == 400, r.text
                assert r.json()["errors"][0]["code"] == "DIGEST_UNSUPPORTED"
                assert "sha256" in r.json()["errors"][0]["message"]
        assert not list(store.glob(f"**/*@{algo}=*"))
    assert (store / ".atomicsig" / "journal").read_bytes() == before


def test_sign_and_store_refuse_other_digest_algorithms(cli: Any, tmp_path: Path, signer: GpgHome) -> None:
    """``sign`` of a sha384 reference and a direct store append agree with the PUT: refused, nothing stored.
    Before: sign stored the file, then failed on the journal ("not recorded"), exit 3."""
    store = tmp_path / "store"
    dig = "sha384:" + "cd" * 48
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                         str(store), f"example.com/{REPO}:x@{dig}")
    assert code == 2, out + err
    assert "only sha256 digests are stored" in out + err
    assert not list(store.glob("**/signature-*"))
    from atomicsig.errors import InputError

    with pytest.raises(InputError, match="only sha256"):
        DirectoryStore(store).append_path(REPO, "sha512:" + "e" * 128, b"\xa3x")
    assert not list(store.glob("**/*@sha512=*"))


# ---- issue 12 #11: deletes only from the source that delivered the signature ----------------------------------------


@pytest.mark.slow
def test_a_peer_cannot_delete_what_it_did_not_deliver(cli: Any, tmp_path: Path, signer: GpgHome,
                                                      signer_pub: Path) -> None:
    """A hostile peer publishes ``del`` records for a signature the follower got from an honest source (x), for
    one signed on the follower itself (y), and for one it re-served itself after copying it from the honest source
    (z): x and y are refused (``delete-not-origin``), z stays because the honest source delivered it too. The
    honest source's own deletes still apply. Before the fix all three were deleted by hash alone."""
    honest, hostile, fol = tmp_path / "honest", tmp_path / "hostile", tmp_path / "fol"
    for d in (honest, hostile, fol):
        d.mkdir()
    (x_ident, x_dig, x), (y_ident, y_dig, y), (z_ident, z_dig, z) = make_sigs(
        signer, [(f"example.com/{REPO}:{t}", digest(1)) for t in ("x", "y", "z")])
    for ident, dig, blob in ((x_ident, x_dig, x), (z_ident, z_dig, z)):
        DirectoryStore(honest).append(parse_ref(ident), dig, blob)
    DirectoryStore(hostile).append(parse_ref(z_ident), z_dig, z)  # copied, served as its own
    DirectoryStore(fol).append(parse_ref(y_ident), y_dig, y)  # signed on the follower itself
    rel = digest_dirname(REPO, digest(1))
    with serve_sigstore(hostile) as hostile_url, serve_sigstore(honest) as honest_url:
        cfg = sync_config(tmp_path / "sync.yaml", fol, [hostile_url, honest_url], [signer_pub])
        sync_once(cli, cfg)
        Journal(hostile).append([("del", f"{rel}/signature-{n}", sha256_hex(b)) for n, b in ((1, x), (2, y), (3, z))])
        state = sync_once(cli, cfg)
        files = assert_consistent(fol)
        assert [present(files, i, d, b) for i, d, b in ((x_ident, x_dig, x), (y_ident, y_dig, y),
                                                        (z_ident, z_dig, z))] == [1, 1, 1]
        assert state["sources"][hostile_url]["rejected"] == {"delete-not-origin": 2}
        assert state["sources"][hostile_url]["deleted"] == 0
        code, out, err = cli("prune", "--sigstore", str(honest), "--key", signer.fingerprint)
        assert code == 0, out + err
        state = sync_once(cli, cfg)
        assert state["sources"][honest_url]["deleted"] == 2
    files = assert_consistent(fol)
    assert [present(files, i, d, b) for i, d, b in ((x_ident, x_dig, x), (y_ident, y_dig, y),
                                                    (z_ident, z_dig, z))] == [0, 1, 0]
    dels = {sha for op, d, _, sha in journal_records(fol) if op == "del" and d == rel}
    assert dels == {sha256_hex(x), sha256_hex(z)}  # followers of the follower hear of it


def test_a_delete_is_journaled_where_the_store_had_no_journal(tmp_path: Path, signer: GpgHome) -> None:
    """prune (and a peer's delete) in a store without a journal: the rebuilt journal lists what is left *and*
    the ``del`` lines, so followers that already hold the removed signatures hear of the removal. Before: the
    journal was only rebuilt (prune), or not written at all (a peer's delete)."""
    from atomicsig.store.prune import remove_blob

    root = tmp_path / "store"
    (_, dig, x), (_, _, y) = make_sigs(signer, [(f"example.com/{REPO}:x", digest(2)),
                                                      (f"example.com/{REPO}:y", digest(2))])
    store = DirectoryStore(root)
    store.append_path(REPO, dig, x)
    store.append_path(REPO, dig, y, origin="https://peer.example/sigs")
    rel = digest_dirname(REPO, dig)
    (root / ".atomicsig" / "journal").unlink()
    assert remove_blob(root, rel, sha256_hex(y), "https://peer.example/sigs") == "deleted"
    assert journal_records(root) == [("add", rel, 1, sha256_hex(x)), ("del", rel, 2, sha256_hex(y))]
    (root / ".atomicsig" / "journal").unlink()
    assert prune_keys(root, {signer.fingerprint}).removed == [f"{rel}/signature-1"]
    assert journal_records(root) == [("del", rel, 1, sha256_hex(x))]
    assert assert_consistent(root) == {rel: {}}


def test_rewrite_keeps_what_it_did_not_decide_to_drop(tmp_path: Path) -> None:
    """The rewrite reads the directory under the lock: a file linked by another writer just before is kept, and
    the renumbering never leaves a gap (checked by a reader thread polling throughout)."""
    from atomicsig.store.prune import rewrite_locked

    root = tmp_path / "store"
    store = DirectoryStore(root)
    blobs = [f"\xa3blob {i}".encode("latin-1") for i in range(40)]
    for b in blobs:
        store.append_path(REPO, digest(3), b)
    rel = digest_dirname(REPO, digest(3))
    d = root / rel
    gaps: list[list[int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            names = os.listdir(d)
            idx = sorted(int(n[len("signature-"):]) for n in names if n.startswith("signature-"))
            if idx != list(range(1, len(idx) + 1)):
                gaps.append(idx)
    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(0, 40, 2):  # drop every other blob, one rewrite at a time, while another writer appends
            rewrite_locked(root, rel, lambda s, k=k: s.blob == blobs[k])  # type: ignore[misc]
            store.append_path(REPO, digest(3), f"\xa3late {k}".encode("latin-1"))
    finally:
        stop.set()
        t.join()
    assert gaps == []
    files = assert_consistent(root)
    kept = {sha256_hex(b) for b in blobs[1::2]} | {sha256_hex(f"\xa3late {k}".encode("latin-1"))
                                                    for k in range(0, 40, 2)}
    assert set(files[rel].values()) == kept and len(files[rel]) == 40


# ---- soak: everything at once ----------------------------------------------------------------------------------------


def run_cli(*args: str) -> None:
    done = subprocess.run([*ATOMICSIG, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"atomicsig {' '.join(args[:2])}: {done.stderr}"


@pytest.mark.slow
def test_soak_puts_prune_peer_deletes_index_and_reads(tmp_path: Path, signer: GpgHome, signer_pub: Path,
                                                      other_signer: GpgHome) -> None:
    """``atomicsig serve`` (token, two trusted keys) takes 100 concurrent PUTs into 5 digest directories while,
    each in its own loop of real CLI processes: ``prune`` removes a retired third key's signatures (re-planted
    every round), ``sync --once`` applies a peer's ``del`` records for signatures that peer delivered and then
    pruned, ``index`` rebuilds the journal, and a reader lists and reads every directory through serve (never
    a 5xx, never a gap). At the end every upload answered 201 is stored exactly once, every directory is gap-free,
    and the journal replays to exactly the files. Bounded to about a minute."""
    retired_home = GpgHome(tmp_path / "gnupg-retired", email="retired@example.com").create()
    try:
        _soak(tmp_path, signer, signer_pub, other_signer, retired_home)
    finally:
        retired_home.kill_agent()


def _soak(tmp_path: Path, signer: GpgHome, signer_pub: Path, other_signer: GpgHome, retired_home: GpgHome) -> None:
    node, peer = tmp_path / "node", tmp_path / "peer"
    node.mkdir()
    peer.mkdir()
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    dirs = 5
    good = make_sigs(signer, [(f"example.com/{REPO}:a{i}", digest(100 + i % dirs)) for i in range(50)]) + \
        make_sigs(other_signer, [(f"example.com/{REPO}:b{i}", digest(100 + i % dirs)) for i in range(50)])
    good.sort(key=lambda g: g[0][-2:])  # interleave the two keys
    local_retired = make_sigs(retired_home, [(f"example.com/{REPO}:r{i}", digest(100 + i % dirs)) for i in range(10)])
    # The peer's own signatures (by a key the node trusts), which it delivers and then prunes, round after round.
    peer_sigs = make_sigs(other_signer, [(f"example.com/{REPO}:p{i}", digest(100 + i % dirs)) for i in range(10)])
    stats: dict[str, int] = {"reads": 0, "read-errors": 0}

    def prune_round() -> None:
        store = DirectoryStore(node)
        for ident, dig, blob in local_retired:
            store.append(parse_ref(ident), dig, blob)
        run_cli("prune", "--sigstore", str(node), "--key", retired_home.fingerprint)

    def peer_round() -> None:
        store = DirectoryStore(peer)
        for ident, dig, blob in peer_sigs:
            store.append(parse_ref(ident), dig, blob)
        run_cli("sync", "--once", "--config", str(cfg))  # the node stores them, delivered by the peer
        run_cli("prune", "--sigstore", str(peer), "--key", other_signer.fingerprint)
        run_cli("sync", "--once", "--config", str(cfg))  # ... and applies the peer's del records

    def index_round() -> None:
        run_cli("index", str(node))
        time.sleep(0.5)

    def read_round() -> None:
        for i in range(dirs):
            dig = digest(100 + i)
            r = requests.get(f"{url}/extensions/v2/{REPO}/signatures/{dig}", timeout=30)
            stats["read-errors"] += r.status_code not in (200, 404)
            for n in range(1, 128):
                r = requests.get(f"{url}/{REPO}@{dig.replace(':', '=')}/signature-{n}", timeout=30)
                if r.status_code == 404:
                    break
                stats["read-errors"] += r.status_code != 200 or not r.content
            stats["reads"] += 1

    with serve_sigstore(peer) as peer_url, \
            serve_sigstore(node, "--token-file", str(token_file(tmp_path)), "--trusted-key", str(signer_pub),
                           "--trusted-key", str(other_pub)) as url:
        cfg = sync_config(tmp_path / "sync.yaml", node, [peer_url], [signer_pub, other_pub])
        t0 = time.monotonic()
        with looping(prune_round) as prunes, looping(peer_round) as peer_rounds, looping(index_round) as indexes, \
                looping(read_round) as reads:
            codes = put_all(url, good, pace=1.2)  # ~100 / 6 threads × 1.2 s ≈ 20–30 s of uploads
        seconds = time.monotonic() - t0
        counts = {"prunes": prunes(), "peer rounds": peer_rounds(), "index runs": indexes(), "read rounds": reads()}
        state = json.loads((node / ".atomicsig" / "sync-state.json").read_text())["sources"][peer_url]
    print(f"\nsoak: {seconds:.0f} s of uploads, {counts}, peer deletes applied {state['deleted']}, {stats}")
    assert codes == [201] * len(good)
    assert stats["read-errors"] == 0
    assert all(n >= 2 for n in counts.values()), counts
    assert state["deleted"] > 0
    files = store_files(node)
    lost = [ident for ident, dig, blob in good if present(files, ident, dig, blob) != 1]
    assert lost == [], f"{len(lost)} of {len(good)} uploads answered 201 are gone or doubled"
    retired_shas = {sha256_hex(b) for _, _, b in local_retired}
    good_shas = {sha256_hex(b) for _, _, b in good}
    # Each peer round ends with its deletes applied: what is left besides the uploads is the local retired key's.
    assert all(s in good_shas | retired_shas for f in files.values() for s in f.values())
    assert assert_consistent(node) == files
    run_cli("prune", "--sigstore", str(node), "--key", retired_home.fingerprint)
    files = assert_consistent(node)
    assert sorted(s for f in files.values() for s in f.values()) == sorted(good_shas)
