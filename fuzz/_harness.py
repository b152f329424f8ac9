"""Shared by every fuzz target: start atheris with the instrumentation hooks and run a target's TestOneInput.

A target script imports atomicsig inside ``atheris.instrument_imports()`` so libFuzzer sees coverage of our code
(not of the standard library), then calls :func:`main`. Given file paths instead of a corpus directory, libFuzzer
just replays those inputs once each, which is how tests/test_fuzz.py replays findings.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType

import atheris

# atheris' comparison hooks stay off: in 2.3 the "str" hook compiles startswith("[") arguments as regexes and
# the "RegEx" hook cannot handle ``\Z``; both crash inside atheris, not in atomicsig.


def main(test_one_input: Callable[[bytes], None]) -> None:
    # The serve target logs per request; the fuzzer's own output is what run.py parses.
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def text(data: bytes) -> str:
    """Fuzzer bytes as text: UTF-8 where valid, so plain-text seeds stay readable and mutations stay useful."""
    return data.decode("utf-8", "replace")


def uninstrument(module: ModuleType, *names: str) -> None:
    """Give ``module.<name>`` back its uninstrumented bytecode.

    atheris 2.3 on Python 3.11 miscompiles some loops (a generator with an f-string ``raise`` inside ``while True``
    reads the wrong local: ``'int' object has no attribute 'find'``). Such a function still runs, just without
    coverage feedback; its globals stay those of the instrumented module.
    """
    origin = module.__file__
    assert origin is not None
    name = module.__name__ + "_uninstrumented"
    spec = importlib.util.spec_from_file_location(name, origin)
    assert spec is not None and spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    sys.modules[name] = plain  # dataclasses look their module up while the body runs
    try:
        spec.loader.exec_module(plain)
    finally:
        del sys.modules[name]
    for fn in names:
        getattr(module, fn).__code__ = getattr(plain, fn).__code__
