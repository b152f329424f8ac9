"""gpg's --with-colons listings parsed once (atomicsig.gnupg.colons), and the gnupg/openpgp layers free of import
cycles (issue 13 item 3). Pure: recorded gpg 2.2 output, no gpg run."""

from __future__ import annotations

from atomicsig.gnupg import colons

# gpg 2.2.40 --with-colons --fixed-list-mode --with-keygrip --list-secret-keys, two keys: a certify-only RSA
# primary with an Ed25519 signing subkey and a stub encryption subkey, then an Ed25519 key with a designated
# revoker, an escaped user ID and an expiry.
LISTING = """\
sec:u:2048:1:98968224EEF6428E:1796197821:::u:::cSC:::+:::23::0:
fpr:::::::::C514147AE20CCBB993B9F7D098968224EEF6428E:
grp:::::::::0A0B0C0D0E0F101112131415161718191A1B1C1D:
uid:u::::1796197821::39F1B516E2C2FAEC531632F635BAE6A75293AE80::A <a@x.org>::::::::::0:
ssb:u:255:22:ae4ce2382eb97ea2:1796197822::::::s:::+::ed25519::
fpr:::::::::bdbdcd53244599ac18477565ae4ce2382eb97ea2:
grp:::::::::1111111111111111111111111111111111111111:
ssb:e:255:18:1234567812345678:1700000000:1710000000:::::e:::#::cv25519::
fpr:::::::::AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA12345678:
sec:-:255:22:A1AC52537E152B07:1796197744:1900000000::u:::scSC:::+::ed25519:::0:
rvk:::1::::::0123456789ABCDEF0123456789ABCDEF01234567:80:
fpr:::::::::37A49AD45D0A13EC954C99DCA1AC52537E152B07:
fpr:::::::::FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF:
uid:u::::1796197744::39F1B516E2C2FAEC531632F635BAE6A75293AE80::J\\xc3\\xb6rg a\\x3ab\\x5cc <j@x.org>::::::::::0:
"""


def test_parse_records_and_joins() -> None:
    first, second = colons.parse(LISTING)
    p = first.primary
    assert (p.kind, p.validity, p.length, p.algorithm, p.keyid, p.created, p.expires) == \
        ("sec", "u", 2048, 1, "98968224EEF6428E", 1796197821, None)
    assert p.fingerprint == "C514147AE20CCBB993B9F7D098968224EEF6428E"
    assert p.keygrip == "0A0B0C0D0E0F101112131415161718191A1B1C1D"
    assert p.primary and p.usage == "c" and p.capabilities == "cSC" and p.token == "+"
    sign, enc = first.subkeys
    assert sign.fingerprint == "BDBDCD53244599AC18477565AE4CE2382EB97EA2" and sign.keyid == "AE4CE2382EB97EA2"
    assert sign.curve == "ed25519" and sign.usage == "s" and not sign.primary
    assert sign.keygrip == "1" * 40
    assert (enc.validity, enc.expires, enc.token, enc.keygrip) == ("e", 1710000000, "#", "")
    assert first.uids == ("A <a@x.org>",) and not first.has_revoker
    # Only the first fpr record after a key counts; rvk marks the key; \\xNN escapes are undone.
    assert second.primary.fingerprint == "37A49AD45D0A13EC954C99DCA1AC52537E152B07"
    assert second.primary.validity == "-" and second.primary.expires == 1900000000
    assert second.has_revoker and second.subkeys == ()
    assert second.uids == ("J\xc3\xb6rg a:b\\c <j@x.org>",)
    assert [r.kind for r in first.records] == ["sec", "ssb", "ssb"]


def test_orphans_and_short_records_are_harmless() -> None:
    listing = "tru::1:1700000000:0:3:1:5\nsub:u:255:22:AB:1::::::s::::::\nfpr:::::::::AB:\npub:u:1:1:CD:5\n"
    (only,) = colons.parse(listing)
    assert only.primary.keyid == "CD" and only.primary.created == 5 and only.primary.fingerprint == ""
    assert only.primary.capabilities == "" and only.primary.curve == ""


def test_secret_key_parts_of_one_key() -> None:
    parts = colons.secret_key_parts(LISTING, "c514147ae20ccbb993b9f7d098968224eef6428e")
    assert [(p.fingerprint[-8:], p.primary, p.usage, p.token, p.pubkey_algo) for p in parts] == [
        ("EEF6428E", True, "c", "+", 1), ("2EB97EA2", False, "s", "+", 22), ("12345678", False, "e", "#", 18)]
    assert parts[1].keygrip == "1" * 40 and parts[1].curve == "ed25519" and parts[2].expires == 1710000000
    assert colons.secret_key_parts(LISTING, "00" * 20) == []
