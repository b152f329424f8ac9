"""``atomicsig mirror`` end to end (issue 15 #1): two real docker-registry instances (upstream and mirror) with a
single image and a two-platform index copied between them by ``skopeo copy --all``; the upstream's signatures in a
tree laid out like Red Hat's lookaside (``<base>/containers/sigstore/<repo>@sha256=<hex>/signature-N``) served by
real nginx and by ``atomicsig serve`` (lookaside GET and extension API); after mirroring, real skopeo pulling from
the mirror through a registries.d lookaside on the local sigstore accepts the images under a ``remapIdentity``
policy, and refuses them without it (the signatures keep their upstream identity: nothing is re-signed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atomicsig.format.reference import parse
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import Journal
from atomicsig.store.sigdir import read_dir
from tests.conftest import needs_registry
from tests.infra import (
    GpgHome,
    Registry,
    insecure_policy,
    nginx,
    push_image,
    push_index,
    registries_d,
    serve_sigstore,
    signed_by_policy,
    skopeo,
    skopeo_pull,
)

pytestmark = [pytest.mark.slow, needs_registry]


@dataclass
class World:
    dir: Path
    up: Registry
    down: Registry
    www: Path  # nginx document root
    tree: Path  # www/containers/sigstore: the upstream lookaside
    single: str
    index: str
    instances: dict[str, str]
    untrusted: bytes

    @property
    def prefix(self) -> str:  # the images of the upstream registry live under <mirror>/vendor
        return f"{self.up.host}={self.down.host}/vendor"

    def refs(self) -> list[str]:
        return [f"{self.up.host}/app:1", f"{self.up.host}/multi:1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, signer: GpgHome, other_signer: GpgHome) -> Iterator[World]:
    d = tmp_path_factory.mktemp("mirror-e2e")
    up, down = Registry(d / "up").start(), Registry(d / "down").start()
    try:
        single = push_image(up.host, "app:1", "mirror-single", d)
        index, instances = push_index(up.host, "multi:1", d)
        tree = d / "www" / "containers" / "sigstore"
        # The vendor signs as vendors do: atomicsig sign --all (the list and every instance) into its lookaside.
        proc = subprocess.run([sys.executable, "-m", "atomicsig", "sign", "--key", signer.fingerprint, "--all",
                               "--sigstore", str(tree), "--tls-verify=false", f"{up.host}/app:1",
                               f"{up.host}/multi:1"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GNUPGHOME": str(signer.path)})
        assert proc.returncode == 0, proc.stderr
        # …and someone the mirror does not trust signed the single image too.
        untrusted = other_signer.sign_image(f"{up.host}/app:1", single)
        DirectoryStore(tree).append(parse(f"{up.host}/app:1"), single, untrusted)
        # The mirror registry gets the images as oc-mirror / skopeo sync copy them: --all, signatures left behind.
        regd = d / "empty-registries.d"
        regd.mkdir()
        for name in ("app:1", "multi:1"):
            skopeo("--policy", str(insecure_policy(d / "insecure.json")), "--registries.d", str(regd), "copy",
                   "--all", "--quiet", "--remove-signatures", "--src-tls-verify=false", "--dest-tls-verify=false",
                   f"docker://{up.host}/{name}", f"docker://{down.host}/vendor/{name}")
        yield World(d, up, down, d / "www", tree, single, index, instances, untrusted)
    finally:
        up.stop()
        down.stop()


def contents(root: Path) -> dict[str, list[bytes]]:
    """digest directory -> its signatures as c/image reads them (every file counted: no gap, no stray file)."""
    out = {}
    for d in sorted(root.rglob("*@sha256=*")):
        if d.is_dir() and ".atomicsig" not in d.parts:
            sigs = read_dir(d)
            assert len(sigs) == len(list(d.iterdir())), f"gap or stray file in {d}"
            out[str(d.relative_to(root))] = [s.blob for s in sigs]
    return out


def run_mirror(cli: Any, world: World, local: Path, pub: Path, *source: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli("mirror", "--json", *source, "--sigstore", str(local), "--key", str(pub),
                         "--mirror-prefix", world.prefix, "--tls-verify=false", *world.refs())
    return code, json.loads(out) if out.strip() else {}, err


def node_pull(world: World, local: Path, pub: Path, name: str, *, remap: bool) -> subprocess.CompletedProcess[str]:
    """What a node pulling from the mirror does: registries.d points the mirror at the local sigstore; the policy
    trusts the vendor key for the mirror's namespace (with remapIdentity: signed for the upstream name)."""
    case = world.dir / f"node-{'remap' if remap else 'plain'}-{local.name}-{name.replace(':', '-')}"
    case.mkdir()
    regd = registries_d(case / "registries.d", f"file://{local}", world.down.host)
    identity = {"type": "remapIdentity", "prefix": f"{world.down.host}/vendor", "signedPrefix": world.up.host}
    policy = signed_by_policy(case / "policy.json", pub, f"{world.down.host}/vendor", identity if remap else None)
    return skopeo_pull(f"{world.down.host}/vendor/{name}", policy, regd, case)


def test_mirror_from_nginx_then_skopeo_pulls_from_the_mirror(cli: Any, world: World, signer_pub: Path) -> None:
    local = world.dir / "local-nginx"
    with nginx(world.www, world.dir / "nginx") as (url, log):
        code, doc, err = run_mirror(cli, world, local, signer_pub, "--from", f"{url}/containers/sigstore")
        assert code == 1, err  # the untrusted signature was refused: a decided "no"
        by_digest = {i["digest"]: i for i in doc["images"]}
        assert set(by_digest) == {world.single, world.index, *world.instances.values()}  # the list and instances
        assert by_digest[world.single]["refused"] == {"untrusted-key": 1}
        assert all(i["stored"] == 1 and i["stored_as"] in ("vendor/app", "vendor/multi") for i in doc["images"])
        assert doc["summary"] == {"digests": 4, "found": 5, "stored": 4, "duplicates": 0,
                                  "refused": {"untrusted-key": 1}, "errors": 0, "unsigned": 0}
        assert f"GET /containers/sigstore/app@sha256={world.single[7:]}/signature-3 " in log.read_text()
        # Nothing re-signed: the local bytes are the vendor's, under the mirror's repository path.
        upstream = contents(world.tree)
        mirrored = contents(local)
        assert {k.replace("vendor/", "", 1): v for k, v in mirrored.items()} == \
            {k: [b for b in v if b != world.untrusted] for k, v in upstream.items()}
        journal = Journal(local).path.read_bytes()
        code, doc, err = run_mirror(cli, world, local, signer_pub, "--from", f"{url}/containers/sigstore")
        assert code == 1 and doc["summary"]["stored"] == 0 and doc["summary"]["duplicates"] == 4, err
        assert contents(local) == mirrored and Journal(local).path.read_bytes() == journal  # re-run adds nothing
    for name in ("app:1", "multi:1"):
        accepted = node_pull(world, local, signer_pub, name, remap=True)
        assert accepted.returncode == 0, accepted.stderr
        refused = node_pull(world, local, signer_pub, name, remap=False)  # the identity is the upstream's
        assert refused.returncode != 0, refused.stderr
        assert f"Signature for identity {world.up.host}/{name} is not accepted" in refused.stderr


def test_mirror_from_atomicsig_serve_lookaside_and_extension(cli: Any, world: World, signer_pub: Path) -> None:
    with serve_sigstore(world.tree) as url:
        lookaside, extension = world.dir / "local-serve", world.dir / "local-ext"
        code, doc, err = run_mirror(cli, world, lookaside, signer_pub, "--from", url)
        assert code == 1 and doc["summary"]["stored"] == 4, err
        code, doc, err = run_mirror(cli, world, extension, signer_pub, "--from-extension", url)
        assert code == 1 and doc["summary"]["stored"] == 4 and doc["summary"]["refused"] == {"untrusted-key": 1}, err
    assert contents(lookaside) == contents(extension) != {}
    assert node_pull(world, extension, signer_pub, "app:1", remap=True).returncode == 0
    # docker-registry has no signature extension: "could not read" (3), never "no signatures" (1).
    code, doc, err = run_mirror(cli, world, world.dir / "local-none", signer_pub, "--from-registry")
    assert code == 3 and all("does not advertise the signature extension" in i["reason"] for i in doc["images"])
    assert not (world.dir / "local-none").exists() or contents(world.dir / "local-none") == {}
