"""Reading the images a node holds from containers-storage (issue 14 item 1).

The slow tests pull real images with podman (vfs, isolated root) from a local docker-registry — a multi-arch
list, one image under two tags, one untagged — and check that what :mod:`atomicsig.store.images` reads equals
what ``podman inspect`` and the registry report. The fast tests build hostile stores by hand.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomicsig.demo.env import tar_layer
from atomicsig.errors import InputError, StorageError
from atomicsig.store.images import (
    StorageLocation,
    bigdata_filename,
    locate_storage,
    node_images,
    read_images,
)
from tests.conftest import HAVE_PODMAN
from tests.infra import insecure_policy, skopeo

MANI = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "config": {}, "layers": []}).encode()
H1 = "sha256:" + hashlib.sha256(MANI).hexdigest()
H2 = "sha256:" + "2" * 64
IMG_ID = "a" * 64


# ---- helpers ------------------------------------------------------------------------------------------------------


def _oci_index(dest: Path, seed: str, arches: tuple[str, ...]) -> Path:
    """An OCI layout whose ``latest`` is an image index with one single-layer image per architecture."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h, len(data)

    entries = []
    for arch in arches:
        raw = tar_layer(f"{seed}-{arch}")
        layer = put(gzip.compress(raw, mtime=0))
        config = put(json.dumps({"architecture": arch, "os": "linux", "config": {},
                                 "rootfs": {"type": "layers",
                                            "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode())
        mani = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config[0], "size": config[1]},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                           "digest": layer[0], "size": layer[1]}]}).encode())
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mani[0],
                        "size": mani[1], "platform": {"architecture": arch, "os": "linux"}})
    index = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": entries}).encode())
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index[0], "size": index[1],
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return dest


def _push(layout: Path, dest: str, policy: Path, *, all_images: bool = False) -> str:
    digest_file = layout.parent / (layout.name + ".digest")
    skopeo("--policy", str(policy), "copy", "--quiet", *(["--all"] if all_images else []), "--dest-tls-verify=false",
           "--digestfile", str(digest_file), f"oci:{layout}:latest", f"docker://{dest}")
    return digest_file.read_text().strip()


class Podman:
    """podman with an isolated root/runroot and vfs storage (nothing of the host's storage is touched)."""

    def __init__(self, work: Path, root: Path, policy: Path) -> None:
        # podman refuses a runroot longer than 50 characters, and pytest-xdist's basetemp (…/popen-gwN/test_…) is
        # longer than that: the runroot (sockets and locks only) gets a short directory of its own.
        self.root, self.runroot, self.policy = root, Path(tempfile.mkdtemp(prefix="podrun-", dir="/tmp")), policy
        weakref.finalize(self, shutil.rmtree, self.runroot, True)
        conf = work / "registries.conf"
        conf.write_text("unqualified-search-registries = []\n")
        self.env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                               "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                               *args], capture_output=True, text=True, env=self.env, timeout=180)
        assert proc.returncode == 0, f"podman {args}: {proc.stderr}"
        return proc.stdout

    def pull(self, ref: str) -> str:
        return self("pull", "--tls-verify=false", "--signature-policy", str(self.policy), "-q", ref).strip()

    def inspect(self, image_id: str) -> dict[str, Any]:
        return json.loads(self("image", "inspect", image_id))[0]  # type: ignore[no-any-return]


def _go_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# ---- real podman stores -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One store with: a multi-arch list pulled by tag, one image under two tags, one untagged image."""
    if not HAVE_PODMAN:
        pytest.skip("needs podman")
    work = tmp_path_factory.mktemp("images")
    policy = insecure_policy(work / "policy.json")
    host = registry.host
    arches = (_go_arch(), "s390x" if _go_arch() != "s390x" else "arm64")
    list_digest = _push(_oci_index(work / "multi", "multi", arches), f"{host}/aud/multi:1", policy, all_images=True)
    raw_list = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/aud/multi:1").stdout)
    instance = next(m["digest"] for m in raw_list["manifests"] if m["platform"]["architecture"] == _go_arch())
    two = _oci_index(work / "two", "two", (_go_arch(),))
    # a single image (not a list) under two tags: copy the instance only
    two_digest = _push(two, f"{host}/aud/two:a", policy)
    _push(two, f"{host}/aud/two:b", policy)
    gone_digest = _push(_oci_index(work / "gone", "gone", (_go_arch(),)), f"{host}/aud/gone:1", policy)

    graphroot = work / "data" / "containers" / "storage"  # also the rootless default under XDG_DATA_HOME=work/data
    pm = Podman(work, graphroot, policy)
    ids = {"multi": pm.pull(f"{host}/aud/multi:1"), "two": pm.pull(f"{host}/aud/two:a")}
    assert pm.pull(f"{host}/aud/two:b") == ids["two"]
    ids["gone"] = pm.pull(f"{host}/aud/gone:1")
    pm("untag", ids["gone"])
    inspected = {k: pm.inspect(v) for k, v in ids.items()}
    return {"work": work, "graphroot": graphroot, "host": host, "ids": ids, "inspect": inspected, "podman": pm,
            "list_digest": list_digest, "instance": instance, "two_digest": two_digest, "gone_digest": gone_digest}


def _by_id(images: list[Any]) -> dict[str, Any]:
    return {img.id: img for img in images}


@pytest.mark.slow
def test_read_matches_podman_inspect(pulled: dict[str, Any]) -> None:
    loc = StorageLocation(graphroot=str(pulled["graphroot"]), driver="vfs", image_root=str(pulled["graphroot"]),
                          rootless=False)
    images = _by_id(read_images(loc))
    assert set(images) == set(pulled["ids"].values())
    for key, image_id in pulled["ids"].items():
        img, ins = images[image_id], pulled["inspect"][key]
        assert img.id == ins["Id"]
        assert img.digest == ins["Digest"], key
        assert sorted(str(t) for t in img.tags) == sorted(ins["RepoTags"] or []), key
        assert sorted(img.repo_digests()) == sorted(ins["RepoDigests"] or []), key
        assert img.problems == ()
        assert (img.driver, img.graphroot) == ("vfs", str(pulled["graphroot"]))


@pytest.mark.slow
def test_multi_arch_list_and_instance_digests(pulled: dict[str, Any]) -> None:
    loc = StorageLocation(str(pulled["graphroot"]), "vfs", str(pulled["graphroot"]), False)
    img = _by_id(read_images(loc))[pulled["ids"]["multi"]]
    assert img.list_digests == (pulled["list_digest"],)
    assert img.manifest_digest == pulled["instance"] != pulled["list_digest"]
    assert set(img.digests) == {pulled["list_digest"], pulled["instance"]}
    assert img.digest == pulled["list_digest"]  # what podman reports as the image Digest for a list pull
    assert img.signature_keys == ("signature-" + pulled["instance"].removeprefix("sha256:"),)
    assert [str(r) for r in img.references] == [f"{pulled['host']}/aud/multi:1"]
    # the manifest bytes really are stored under the c/storage encoded names
    for m in img.manifests:
        assert (pulled["graphroot"] / "vfs-images" / img.id / bigdata_filename(m.key)).is_file()


@pytest.mark.slow
def test_two_tags_and_untagged(pulled: dict[str, Any]) -> None:
    loc = StorageLocation(str(pulled["graphroot"]), "vfs", str(pulled["graphroot"]), False)
    images = _by_id(read_images(loc))
    two = images[pulled["ids"]["two"]]
    assert sorted(str(t) for t in two.tags) == [f"{pulled['host']}/aud/two:a", f"{pulled['host']}/aud/two:b"]
    assert two.manifest_digest == pulled["two_digest"] and two.list_digests == ()
    gone = images[pulled["ids"]["gone"]]
    assert gone.names == () and gone.tags == ()
    assert gone.manifest_digest == pulled["gone_digest"] == gone.digest


@pytest.mark.slow
def test_rootless_location_under_fake_home(pulled: dict[str, Any]) -> None:
    """uid 1000 with XDG_DATA_HOME (or HOME/.local/share) → <data>/containers/storage, driver found on disk."""
    work: Path = pulled["work"]
    env = {"HOME": str(work / "home"), "XDG_DATA_HOME": str(work / "data")}
    loc, images = node_images(env, uid=1000, root=str(work / "no-sysroot"))
    assert loc.graphroot == str(pulled["graphroot"]) and loc.driver == "vfs" and loc.rootless
    assert set(_by_id(images)) == set(pulled["ids"].values())
    # without XDG_DATA_HOME: ~/.local/share/containers/storage
    home = work / "home2"
    (home / ".local" / "share").mkdir(parents=True)
    (home / ".local" / "share" / "containers").symlink_to(work / "data" / "containers")
    loc2 = locate_storage({"HOME": str(home)}, uid=1000, root=str(work / "no-sysroot"))
    assert loc2.graphroot == str(home / ".local/share/containers/storage")
    # the user's storage.conf redirects graphroot ($HOME expanded, as expandEnvPath does)
    xdg = work / "xdg"
    (xdg / "containers").mkdir(parents=True)
    (xdg / "containers" / "storage.conf").write_text(
        '[storage]\ndriver = "vfs"\ngraphroot = "$HOME/../data/containers/storage"\n')
    loc3, images3 = node_images({"HOME": str(work / "home"), "XDG_CONFIG_HOME": str(xdg)}, uid=1000,
                                root=str(work / "no-sysroot"))
    assert loc3.config_file == str(xdg / "containers" / "storage.conf")
    assert loc3.graphroot == str(pulled["graphroot"]) and loc3.driver_source.startswith("storage.conf")
    assert len(images3) == 3


@pytest.mark.slow
def test_root_storage_conf_as_podman_reads_it(pulled: dict[str, Any]) -> None:
    """CONTAINERS_STORAGE_CONF and an alternate root: we find the store podman itself opens with that config."""
    work: Path = pulled["work"]
    conf = work / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{pulled["graphroot"]}"\nrunroot = "{work / "run"}"\n')
    env = {"HOME": "/root", "CONTAINERS_STORAGE_CONF": str(conf)}
    loc, images = node_images(env, uid=0)
    assert loc.config_file == str(conf) and loc.graphroot == str(pulled["graphroot"])
    proc = subprocess.run(["podman", "--cgroup-manager", "cgroupfs", "--events-backend", "none", "images",
                           "--all", "--no-trunc", "--format", "{{.ID}}"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    podman_ids = {line.removeprefix("sha256:") for line in proc.stdout.split()}
    assert podman_ids == {img.id for img in images}
    # a node mounted at <sysroot>: /etc/containers/storage.conf and the graphroot both live under it
    sysroot = work / "sysroot"
    (sysroot / "etc" / "containers").mkdir(parents=True)
    (sysroot / "var" / "lib").mkdir(parents=True)
    (sysroot / "var" / "lib" / "store").symlink_to(pulled["graphroot"])
    (sysroot / "etc" / "containers" / "storage.conf").write_text('[storage]\ndriver = "vfs"\n'
                                                                 'graphroot = "/var/lib/store"\n')
    loc2, images2 = node_images({"HOME": "/root"}, uid=0, root=str(sysroot))
    assert loc2.graphroot == str(sysroot / "var/lib/store") and len(images2) == 3


# ---- hostile or broken stores (no podman) -------------------------------------------------------------------------


def _store(tmp_path: Path, records: list[dict[str, Any]] | bytes, manifests: dict[str, bytes] | None = None,
           ) -> StorageLocation:
    images = tmp_path / "vfs-images"
    images.mkdir(parents=True, exist_ok=True)
    data = records if isinstance(records, bytes) else json.dumps(records).encode()
    (images / "images.json").write_bytes(data)
    for key, body in (manifests or {}).items():
        (images / IMG_ID).mkdir(exist_ok=True)
        (images / IMG_ID / bigdata_filename(key)).write_bytes(body)
    return StorageLocation(str(tmp_path), "vfs", str(tmp_path), False)


REC = {"id": IMG_ID, "names": ["example.com/a:1"], "big-data-names": ["manifest-" + H1, "manifest"],
       "big-data-digests": {"manifest-" + H1: H1, "manifest": H1}}


def test_bigdata_names() -> None:
    assert bigdata_filename("manifest") == "manifest"
    key = "manifest-" + H1
    assert bigdata_filename(key) == "=" + base64.b64encode(key.encode()).decode()


def test_synthetic_store_and_recompute_digests(tmp_path: Path) -> None:
    rec = {**REC, "names": ["example.com/a:1", "example.com/a@" + H1, "NOT A REF"]}
    (img,) = read_images(_store(tmp_path, [rec], {"manifest-" + H1: MANI, "manifest": MANI}))
    assert img.digest == H1 and img.digests == (H1,) and img.manifest_digest == H1
    assert [str(r) for r in img.references] == ["example.com/a:1", "example.com/a@" + H1]
    assert any("NOT A REF" in p for p in img.problems)
    # an explicit digest comes first; a later image that claims a name takes it from the earlier one
    other = {"id": "b" * 64, "digest": H2, "names": ["example.com/a:1"]}
    a, b = read_images(_store(tmp_path, [rec, other]))
    assert "example.com/a:1" not in a.names and b.names == ("example.com/a:1",) and b.digests == (H2,)


def test_empty_and_absent_store(tmp_path: Path) -> None:
    assert read_images(_store(tmp_path, b"")) == []
    assert read_images(StorageLocation(str(tmp_path / "none"), "vfs", str(tmp_path / "none"), False)) == []
    assert read_images(StorageLocation(str(tmp_path), None, str(tmp_path), False)) == []


@pytest.mark.parametrize("data", [json.dumps([REC])[:-7].encode(), b"{}", b'[{"names": []}]', b"[" * 100_000,
                                  json.dumps([{**REC, "big-data-names": ["manifest", [1]]}]).encode(),
                                  json.dumps([{**REC, "big-data-digests": {"manifest": H1, "x": 3}}]).encode(),
                                  json.dumps([{**REC, "digest": 7}]).encode(),
                                  json.dumps([{**REC, "digest": "sha256:xyz"}]).encode(), b"\xff\xfe"])
def test_broken_images_json_is_input_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InputError, match=r"images\.json"):
        read_images(_store(tmp_path, data))


def test_symlinked_store_and_index_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    _store(real, [REC])
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "vfs-images").symlink_to(real / "vfs-images")
    with pytest.raises(StorageError, match="symbolic link"):
        read_images(StorageLocation(str(tmp_path / "s1"), "vfs", str(tmp_path / "s1"), False))
    (tmp_path / "s2" / "vfs-images").mkdir(parents=True)
    (tmp_path / "s2" / "vfs-images" / "images.json").symlink_to(real / "vfs-images" / "images.json")
    with pytest.raises(StorageError, match="symbolic link"):
        read_images(StorageLocation(str(tmp_path / "s2"), "vfs", str(tmp_path / "s2"), False))


def test_fifo_and_huge_index_refused(tmp_path: Path) -> None:
    (tmp_path / "f" / "vfs-images").mkdir(parents=True)
    os.mkfifo(tmp_path / "f" / "vfs-images" / "images.json")
    with pytest.raises(StorageError, match="not a regular file"):
        read_images(StorageLocation(str(tmp_path / "f"), "vfs", str(tmp_path / "f"), False))
    loc = _store(tmp_path / "h", b"[" + b" " * 4096 + b"]")
    with pytest.raises(StorageError, match="larger than"):
        read_images(loc, limit=1024)


def test_planted_manifest_symlink_is_a_problem_not_a_leak(tmp_path: Path) -> None:
    loc = _store(tmp_path, [REC], {"manifest-" + H1: MANI})
    (tmp_path / "vfs-images" / IMG_ID / "manifest").symlink_to("/etc/passwd")
    (img,) = read_images(loc)
    assert img.manifest_digest == H1  # the one regular manifest is used
    assert any("symbolic link" in p for p in img.problems)
    # bytes changed behind podman's back, or a nesting bomb, are problems of that image, not a crash
    loc = _store(tmp_path / "t", [REC], {"manifest-" + H1: MANI + b" ", "manifest": b"[" * 100_000})
    (img,) = read_images(loc)
    assert img.manifests == () and img.manifest_digest is None
    assert any("does not match" in p for p in img.problems) and any("nested" in p for p in img.problems)
    # an id that would walk out of the store is never used as a path
    (bad,) = read_images(_store(tmp_path / "b", [{**REC, "id": "../../etc"}]))
    assert bad.manifests == () and bad.problems


def test_storage_conf_errors(tmp_path: Path) -> None:
    conf = tmp_path / "storage.conf"
    conf.write_text("[storage\n")
    with pytest.raises(InputError, match=r"storage\.conf"):
        locate_storage({"HOME": "/root", "CONTAINERS_STORAGE_CONF": str(conf)}, uid=0)
    conf.write_text('[storage]\ndriver = "../x"\ngraphroot = "/g"\n')
    with pytest.raises(InputError, match="driver"):
        locate_storage({"HOME": "/root", "CONTAINERS_STORAGE_CONF": str(conf)}, uid=0)
    with pytest.raises(InputError, match="no containers-storage"):
        locate_storage({"HOME": "/root"}, uid=0, graphroot=str(tmp_path / "missing"), driver="vfs")


def test_rootless_inherits_only_rootless_settings(tmp_path: Path) -> None:
    """Old generation, no user file: the system graphroot is root's; rootless_storage_path ($UID, $HOME) is used."""
    sysroot = tmp_path / "sys"
    (sysroot / "etc/containers").mkdir(parents=True)
    (sysroot / "etc/containers/storage.conf").write_text(
        '[storage]\ndriver = "overlay"\ngraphroot = "/var/lib/containers/storage"\n'
        'rootless_storage_path = "$HOME/st-$UID"\n')
    loc = locate_storage({"HOME": "/home/u"}, uid=1000, root=str(sysroot))
    assert loc.graphroot == "/home/u/st-1000" and loc.driver == "overlay"
    rootful = locate_storage({"HOME": "/root"}, uid=0, root=str(sysroot))
    assert rootful.graphroot == str(sysroot / "var/lib/containers/storage")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=20)
_field_values = st.one_of(_json, st.just(H1), st.just(["example.com/a:1", 3]), st.just({"manifest": H1}),
                          st.just(["manifest", "manifest-" + H1]), st.just(["manifest", [1]]),
                          st.just({"manifest": H1, "x": 3}))
_record = st.dictionaries(st.sampled_from(["id", "digest", "names", "big-data-names", "big-data-digests",
                                           "created", "layer"]), _field_values, max_size=7)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.one_of(_record, _json), max_size=4), manifest=st.binary(max_size=64) | st.just(MANI))
def test_any_images_json_is_read_or_refused_never_a_crash(tmp_path: Path, records: list[Any],
                                                          manifest: bytes) -> None:
    loc = _store(tmp_path, json.dumps(records).encode(), {"manifest": manifest, "manifest-" + H1: manifest})
    try:
        images = read_images(loc)
    except (InputError, StorageError) as exc:
        assert str(exc)
        return
    for img in images:
        assert img.id and all(isinstance(n, str) for n in img.names)


def test_root_conf_order_etc_then_usr_share(tmp_path: Path) -> None:
    """Root: /etc/containers/storage.conf if present, else /usr/share/containers/storage.conf, else built-ins."""
    sysroot = tmp_path / "sys"
    (sysroot / "usr/share/containers").mkdir(parents=True)
    (sysroot / "usr/share/containers/storage.conf").write_text('[storage]\ndriver = "vfs"\ngraphroot = "/vendor"\n')
    loc = locate_storage({"HOME": "/root"}, uid=0, root=str(sysroot))
    assert loc.graphroot == str(sysroot / "vendor") and loc.config_file == str(
        sysroot / "usr/share/containers/storage.conf")
    (sysroot / "etc/containers").mkdir(parents=True)
    (sysroot / "etc/containers/storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    loc = locate_storage({"HOME": "/root"}, uid=0, root=str(sysroot))
    assert loc.graphroot == str(sysroot / "var/lib/containers/storage") and loc.driver == "overlay"
    # STORAGE_DRIVER beats the file; overlay2 is overlay (ReloadConfigurationFile)
    loc = locate_storage({"HOME": "/root", "STORAGE_DRIVER": "overlay2"}, uid=0, root=str(sysroot))
    assert loc.driver == "overlay" and loc.driver_source == "STORAGE_DRIVER"
    # nothing configured: the driver whose store exists, non-vfs first (drivers.New prior-driver scan)
    (sysroot / "etc/containers/storage.conf").unlink()
    (sysroot / "usr/share/containers/storage.conf").unlink()
    store = sysroot / "var/lib/containers/storage"
    (store / "vfs-images").mkdir(parents=True)
    assert locate_storage({"HOME": "/root"}, uid=0, root=str(sysroot)).driver == "vfs"
    (store / "btrfs-images").mkdir()
    assert locate_storage({"HOME": "/root"}, uid=0, root=str(sysroot)).driver == "btrfs"
