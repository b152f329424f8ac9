"""atomicsig: GPG "simple signing" for container images, node trust policy, and sigstore sync.

The supported Python surface is exactly what ``__all__`` names (README, "Library use"): sign and verify images,
open keys and stores, mirror signatures and carry them in bundles (trust before write, through an Intake),
compile a policy. Everything else (the layers under ``atomicsig/``, docs/architecture.md)
may change between releases.

The names load on first use (PEP 562), so ``import atomicsig`` stays as cheap as the command line's start-up
needs: a script that only verifies never imports the signers, the policy compiler or the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from atomicsig.version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from atomicsig.errors import AtomicsigError, InputError, Rejected, Undecided
    from atomicsig.format.identity import IdentityMatcher
    from atomicsig.format.reference import Reference
    from atomicsig.format.reference import parse as parse_reference
    from atomicsig.gnupg.keyring import Keyring
    from atomicsig.ops.bundle import BundleContents, export_bundle, import_bundle, read_bundle
    from atomicsig.ops.bundle import ExportResult as BundleExportResult
    from atomicsig.ops.bundle import ImportResult as BundleImportResult
    from atomicsig.ops.bundle import parse_since as parse_bundle_since
    from atomicsig.ops.intake import Intake
    from atomicsig.ops.keys import open_signers, trusted_verifier
    from atomicsig.ops.mirror import ImageResult as MirrorResult
    from atomicsig.ops.mirror import mirror_many, open_upstream, parse_prefix_map
    from atomicsig.ops.resolve import Resolver, Target
    from atomicsig.ops.sign import Outcome as SignOutcome
    from atomicsig.ops.sign import sign_many
    from atomicsig.ops.verify import ImageVerdict, identity_matcher, verify_many
    from atomicsig.policy.compile import CompiledPolicy, compile_policy
    from atomicsig.signers.base import Signer
    from atomicsig.store.base import SignatureStore, StoredSignature
    from atomicsig.store.directory import DirectoryStore
    from atomicsig.store.select import choose_store as open_store

#: Public name -> (module, attribute). One line per name; the README example uses them.
_EXPORTS: dict[str, tuple[str, str]] = {
    # errors: every expected failure; .exit_code says rejected (1), bad input (2) or could not decide (3)
    "AtomicsigError": ("atomicsig.errors", "AtomicsigError"),
    "InputError": ("atomicsig.errors", "InputError"),
    "Rejected": ("atomicsig.errors", "Rejected"),
    "Undecided": ("atomicsig.errors", "Undecided"),
    # references and identities
    "Reference": ("atomicsig.format.reference", "Reference"),
    "parse_reference": ("atomicsig.format.reference", "parse"),
    "IdentityMatcher": ("atomicsig.format.identity", "IdentityMatcher"),
    "identity_matcher": ("atomicsig.ops.verify", "identity_matcher"),
    # keys
    "Keyring": ("atomicsig.gnupg.keyring", "Keyring"),
    "open_signers": ("atomicsig.ops.keys", "open_signers"),
    "trusted_verifier": ("atomicsig.ops.keys", "trusted_verifier"),
    "Signer": ("atomicsig.signers.base", "Signer"),
    # stores
    "open_store": ("atomicsig.store.select", "choose_store"),
    "SignatureStore": ("atomicsig.store.base", "SignatureStore"),
    "StoredSignature": ("atomicsig.store.base", "StoredSignature"),
    "DirectoryStore": ("atomicsig.store.directory", "DirectoryStore"),
    # operations
    "Resolver": ("atomicsig.ops.resolve", "Resolver"),
    "Target": ("atomicsig.ops.resolve", "Target"),
    "sign_many": ("atomicsig.ops.sign", "sign_many"),
    "SignOutcome": ("atomicsig.ops.sign", "Outcome"),
    "verify_many": ("atomicsig.ops.verify", "verify_many"),
    "ImageVerdict": ("atomicsig.ops.verify", "ImageVerdict"),
    # copying signatures in: every one checked by an Intake (the keys you trust) before it is stored
    "Intake": ("atomicsig.ops.intake", "Intake"),
    "mirror_many": ("atomicsig.ops.mirror", "mirror_many"),
    "open_upstream": ("atomicsig.ops.mirror", "open_upstream"),
    "parse_prefix_map": ("atomicsig.ops.mirror", "parse_prefix_map"),
    "MirrorResult": ("atomicsig.ops.mirror", "ImageResult"),
    "export_bundle": ("atomicsig.ops.bundle", "export_bundle"),
    "import_bundle": ("atomicsig.ops.bundle", "import_bundle"),
    "read_bundle": ("atomicsig.ops.bundle", "read_bundle"),
    "parse_bundle_since": ("atomicsig.ops.bundle", "parse_since"),
    "BundleContents": ("atomicsig.ops.bundle", "BundleContents"),
    "BundleExportResult": ("atomicsig.ops.bundle", "ExportResult"),
    "BundleImportResult": ("atomicsig.ops.bundle", "ImportResult"),
    # policy
    "compile_policy": ("atomicsig.policy.compile", "compile_policy"),
    "CompiledPolicy": ("atomicsig.policy.compile", "CompiledPolicy"),
}

#: Spelled out (not computed) so linters and type checkers read it; tests/test_api.py checks it against _EXPORTS.
__all__ = [
    "AtomicsigError",
    "BundleContents",
    "BundleExportResult",
    "BundleImportResult",
    "CompiledPolicy",
    "DirectoryStore",
    "IdentityMatcher",
    "ImageVerdict",
    "InputError",
    "Intake",
    "Keyring",
    "MirrorResult",
    "Reference",
    "Rejected",
    "Resolver",
    "SignOutcome",
    "SignatureStore",
    "Signer",
    "StoredSignature",
    "Target",
    "Undecided",
    "__version__",
    "compile_policy",
    "export_bundle",
    "identity_matcher",
    "import_bundle",
    "mirror_many",
    "open_signers",
    "open_store",
    "open_upstream",
    "parse_bundle_since",
    "parse_prefix_map",
    "parse_reference",
    "read_bundle",
    "sign_many",
    "trusted_verifier",
    "verify_many",
]


def __getattr__(name: str) -> object:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'atomicsig' has no attribute {name!r}") from None
    value: object = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # next time, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
