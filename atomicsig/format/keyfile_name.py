"""The name of a keyring file ``policy apply`` installs, once: ``atomicsig-<key>[+<key>…]-<12 hex>.<gpg|pub>``.

Built by the policy compiler (:func:`atomicsig.policy.render.keyring_name`) and read back by ``audit``, ``verify``
and ``policy explain`` (:func:`key_names`), which name a ``signedBy`` requirement after the key set of its keyring
("required signer build: no valid signature") instead of a hash-suffixed path. policy.json keeps no other trace of
the YAML's key names, so the file name is where they survive; keeping build and parse here means they cannot drift.

* ``<key>``: policy key names (:func:`atomicsig.format.validate.check_key_name`: lowercase letters, digits,
  ``.``, ``_``, ``-``), sorted and joined by ``+`` (a character no key name holds); a join longer than 100
  characters becomes ``keys-<16 hex of its sha256>``.
* ``<12 hex>``: the first 12 hex digits of sha256 of the file's bytes, so changed bytes get a new name and a file
  a policy.json names is never rewritten in place (docs/policy.md, "one commit point").
"""

from __future__ import annotations

import hashlib
import re

from atomicsig.format import validate

PREFIX = "atomicsig-"
MAX_JOINED = 100
_NAME = re.compile(r"atomicsig-(?P<names>[a-z0-9][a-z0-9._+-]*)-(?P<hash>[0-9a-f]{12})\.(?:gpg|pub)\Z")


def build(names: tuple[str, ...], data: bytes, ext: str = "gpg") -> str:
    """The file name for the key set ``names`` holding ``data`` (each name validated: it becomes a file name)."""
    for n in names:
        validate.check_key_name("key name", n)
    joined = "+".join(sorted(names))
    if len(joined) > MAX_JOINED:
        joined = "keys-" + hashlib.sha256(joined.encode()).hexdigest()[:16]
    return f"{PREFIX}{joined}-{hashlib.sha256(data).hexdigest()[:12]}.{ext}"


def key_names(file_name: str) -> tuple[str, ...] | None:
    """The key names a file name built by :func:`build` carries (sorted), or None for any other name (a keyring
    an admin wrote by hand, a path of another tool). A long set comes back as its one ``keys-<hash>`` stand-in."""
    m = _NAME.match(file_name)
    if m is None:
        return None
    return tuple(m.group("names").split("+"))
