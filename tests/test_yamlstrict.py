"""One strict YAML reader (atomicsig/format/yamlstrict.py) for every YAML input (issue 13, "one strict YAML loader").

The policy YAML, the sync config, the signers file, the serve config and registries.d all go through it: a duplicate
key is refused at any depth with ``file:line`` (compared by its text, as containers/image's yaml.v3 does), and no
input, however malformed, escapes as a Python traceback. registries.d keeps c/image's rule that unknown keys are
ignored (SPEC §4.1); our own files refuse them. The sync-config and signers-file duplicate cases live in
tests/test_sync_hostile.py (test_sync_config_durations_lines_duplicates_and_did_you_mean, test_signers_file_strict).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomicsig.errors import InputError, PolicyError
from atomicsig.format import reference, yamlstrict
from atomicsig.ops.keys import load_specs
from atomicsig.policy import schema
from atomicsig.serve.config import load_file as load_config
from atomicsig.store import registries_d
from atomicsig.sync import config as sync_config

#: Explicitly tagged scalars PyYAML's constructors fail on with bare ValueError / KeyError / AttributeError.
BAD_SCALARS = ["!!int x", "!!float x", "!!bool maybe", "!!timestamp x", "2001-13-45", "!!binary 'zz%'"]


def _registries(text: str, source: str = "r.yaml") -> registries_d.RegistriesConfig:
    cfg = registries_d.RegistriesConfig()
    registries_d.merge_file(cfg, text, source)
    return cfg


# ---- registries.d ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("docker:\n  quay.io:\n    lookaside: https://a\ndocker: {}\n",
     "r.yaml:4: duplicate key 'docker' (first defined at line 1)"),
    ("docker:\n  quay.io:\n    lookaside: https://a\n  quay.io:\n    lookaside: https://b\n",
     "r.yaml:4: duplicate key 'quay.io' (first defined at line 2)"),
    ("docker:\n  quay.io:\n    lookaside: https://a\n    lookaside: https://b\n",
     "r.yaml:4: duplicate key 'lookaside' (first defined at line 3)"),
    ("default-docker:\n  sigstore: https://a\n  sigstore-staging: file:///x\n  sigstore: https://b\n",
     "r.yaml:4: duplicate key 'sigstore' (first defined at line 2)"),
    ("docker: {quay.io: {lookaside: 'https://a', lookaside: 'https://b'}}\n",
     "r.yaml:1: duplicate key 'lookaside' (first defined at line 1)"),
])
def test_registries_d_duplicates_refused_with_file_and_line(text: str, want: str) -> None:
    """Regression: registries.d duplicates were refused, but with PyYAML's multi-line text ("parsing r.yaml: while
    constructing … in "<unicode string>", line 5, column 1"), not the ``file:line:`` every other input reports."""
    with pytest.raises(PolicyError) as info:
        _registries(text)
    assert info.value.message.startswith(want), info.value.message


def test_registries_d_keys_compared_as_yaml_v3_compares_them() -> None:
    """yaml.v3 (c/image's parser) compares keys by kind and text: ``1`` and ``"1"`` are the same key."""
    with pytest.raises(PolicyError, match=r"^r\.yaml:3: duplicate key '1' \(first defined at line 2\)"):
        _registries("docker:\n  1: {}\n  '1': {}\n")


def test_registries_d_unknown_keys_still_ignored() -> None:
    """c/image ignores unknown keys in registries.d at every level (SPEC §4.1): a file written for a newer c/image
    must not break an older reader, so neither does it break ours."""
    cfg = _registries("future-top: 1\ndefault-docker:\n  lookaside: https://d\n  later-key: [1, 2]\n"
                      "docker:\n  quay.io/a:\n    sigstore: https://s\n    unknown: {x: 1}\n")
    ref = reference.parse("quay.io/a/b:1")
    assert cfg.lookaside_for(ref) == ("https://s", "quay.io/a")
    assert cfg.lookaside_for(reference.parse("example.com/x:1")) == ("https://d", "default-docker")
    assert yamlstrict.load("", "empty.yaml", PolicyError)[0] is None
    assert _registries("{}\n").docker == {}


def test_registries_d_conflicts_across_files_unchanged(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("docker:\n  quay.io: {lookaside: https://a}\n")
    (tmp_path / "b.yaml").write_text("docker:\n  quay.io: {lookaside: https://b}\n")
    with pytest.raises(PolicyError, match=r'"docker" namespace "quay\.io" defined both in'):
        registries_d.load_dir(tmp_path)


# ---- malformed input is an error with file:line, never a traceback -----------------------------------------------

@pytest.mark.parametrize("bad", BAD_SCALARS)
def test_badly_tagged_scalars_are_input_errors_everywhere(tmp_path: Path, bad: str) -> None:
    """Regression: PyYAML raises bare ValueError (``!!int x``), KeyError (``!!bool maybe``) or AttributeError
    (``!!timestamp x``) from its constructors; the signers file, registries.d, the serve config and the sync config
    let them escape as tracebacks (exit 1, which reads as "rejected")."""
    with pytest.raises(InputError, match=r"^s\.yaml:3: "):
        load_specs(f"keys:\n  - name: A\n    email: {bad}\n", "s.yaml")
    with pytest.raises(PolicyError, match=r"^r\.yaml:3: "):
        _registries(f"docker:\n  quay.io:\n    lookaside: {bad}\n")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"sigstore: /srv\nthreads: {bad}\n")
    with pytest.raises(InputError, match=rf"^{cfg}:2: "):
        load_config(str(cfg))
    if not bad.startswith("!!binary") and bad != "2001-13-45":  # a string (or date) is refused as "not a duration"
        sync = f"sigstore: {tmp_path}\nsources: [{{url: 'http://a'}}]\ntrusted-keys: [/k]\ninterval: {bad}\n"
        with pytest.raises(InputError, match=r"^c\.yaml:4: interval: .* is not a valid !!"):
            sync_config.loads(sync, "c.yaml")


@pytest.mark.parametrize("text", ["? [a]\n: b\n", "? {a: 1}\n: b\n", "keys:\n  ? [x]\n  : y\n"])
def test_unhashable_keys_are_input_errors(text: str) -> None:
    """Regression: a sequence or mapping as a key crashed the signers file reader (ConstructorError)."""
    with pytest.raises(InputError, match=r"^s\.yaml:\d+: found unhashable mapping key"):
        load_specs(text, "s.yaml")
    with pytest.raises(PolicyError, match="unhashable"):
        registries_d.merge_file(registries_d.RegistriesConfig(), text, "x.yaml")


def test_cli_signers_file_with_bad_key_exits_2(cli: Any, tmp_path: Path) -> None:
    signers = tmp_path / "s.yaml"
    signers.write_text("keys:\n  - name: A\n    email: a@example.com\n    expire: !!int never\n")
    code, _, err = cli("keys", "generate", "-f", str(signers), "--gnupghome", str(tmp_path / "g"))
    assert code == 2 and f"atomicsig: error: {signers}:4: 'never' is not a valid !!int\n" in err, err
    assert "Traceback" not in err


def test_nested_duplicates_refused_in_every_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^s\.yaml:3: duplicate key 'name' \(first defined at line 2\)"):
        load_specs("keys:\n  - name: A\n    name: B\n    email: a@example.com\n", "s.yaml")
    sync = f"sigstore: {tmp_path}\nsources: [{{url: 'http://a'}}]\ntrusted-keys: [/k]\n" \
           "pass-limit:\n  records: 1\n  records: 2\n"
    with pytest.raises(InputError, match=r"^c\.yaml:6: .*duplicate key 'records' \(first defined at line 5\)"):
        sync_config.loads(sync, "c.yaml")
    with pytest.raises(PolicyError, match=r"^p\.yaml:4: .*duplicate key 'action' \(first defined at line 3\)"):
        schema.loads("default: reject\nscopes:\n  quay.io: {action: reject,\n    action: accept}\n", "p.yaml")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("sigstore: /srv\ntrusted-keys:\n  - /a\nsigstore: /other\n")
    with pytest.raises(InputError, match=rf"^{cfg}:4: duplicate key 'sigstore' \(first defined at line 1\)"):
        load_config(str(cfg))


def test_deep_nesting_is_an_input_error() -> None:
    for text in ("[" * 100_000, "a: " + "[" * 5000 + "]" * 5000 + "\n"):
        with pytest.raises(InputError, match=r"^s\.yaml:"):
            yamlstrict.load(text, "s.yaml")


_scalar = st.one_of(st.sampled_from([*BAD_SCALARS, "x", "1", "'1'", "~", "yes", "[]", "{}", "&a 1", "*a", "!!str 1",
                                     "!!set {a: null}", "!!omap [{a: 1}]", "? [a]", "<<: {a: 1}", "|\n  x"]),
                    st.text(max_size=8))
_key = st.sampled_from(["keys", "name", "email", "docker", "sigstore", "default-docker", "quay.io", "a", "1", "'1'"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), _key, _scalar), max_size=6))
def test_every_yaml_input_raises_only_its_error_type(lines: list[tuple[int, str, str]]) -> None:
    """Whatever the text, each reader raises its own error type (exit 2 with a message), never a traceback."""
    text = "".join(f"{'  ' * depth}{key}: {value}\n" for depth, key, value in lines)
    for read, error in ((lambda t: load_specs(t, "s.yaml"), InputError),
                        (lambda t: _registries(t), PolicyError),
                        (lambda t: sync_config.loads(t, "c.yaml"), InputError),
                        (lambda t: schema.loads(t, "p.yaml"), PolicyError)):
        with contextlib.suppress(error):
            read(text)


def test_flow_depth_is_checked_before_the_parser_sees_the_text() -> None:
    """PyYAML 6.0's libyaml composer recursed in C without a limit: ``[`` * 100,000 crashed the process with SIGSEGV
    (seen on the minimum-versions CI run); the depth is now refused before parsing, whichever PyYAML is installed."""
    assert yamlstrict.flow_depth("a: [1, [2, {b: 3}]]\n") == 3
    assert yamlstrict.flow_depth("a: \"[[[[\"\nb: '[{''{'\n# [[[[\n") == 0  # quoted scalars and comments
    nested = "a: " + "[" * yamlstrict.MAX_FLOW_DEPTH + "]" * yamlstrict.MAX_FLOW_DEPTH + "\n"
    assert yamlstrict.load(nested, "ok.yaml")[0]["a"] is not None
    with pytest.raises(InputError, match=r"^s\.yaml: invalid YAML: nested too deeply"):
        yamlstrict.load("a: " + "[" * (yamlstrict.MAX_FLOW_DEPTH + 1), "s.yaml")
