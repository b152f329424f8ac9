"""The one strict YAML reader for every YAML input (policy YAML, sync config, signers file, serve config,
registries.d).

PyYAML's ``safe_load`` keeps the last of two duplicate keys without a word (``sigstore: /a`` then
``sigstore: /b`` silently syncs into ``/b``) and its dicts forget line numbers. So YAML is *composed* into a
node tree (``yaml.compose``, safe tags only) and walked: every error names ``file:line``, duplicate keys are
refused at any depth, and unknown keys get a did-you-mean. Pure: callers read the file.

Duplicates are compared as containers/image's YAML parser (yaml.v3) compares them: by the key's text, so ``1`` and
``"1"`` are the same key, ``yes`` and ``true`` are not. Whether an *unknown* key is an error is the caller's choice
(:meth:`Ctx.mapping` with ``allowed``): our own files refuse them, registries.d ignores them as c/image does (SPEC
§4.1). Every failure, including PyYAML's constructors raising bare ``ValueError`` for an explicitly tagged scalar
such as ``!!int x`` or deep nesting in the pure-Python parser, is the caller's error type with ``file:line``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from atomicsig.errors import AtomicsigError, InputError

#: libyaml's composer when present (same nodes and marks, ~10x faster on a 500-scope file).
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
STR = "tag:yaml.org,2002:str"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"


#: What PyYAML's safe constructors raise, besides YAMLError, for a scalar whose explicit tag does not fit its text
#: (``!!int x``: ValueError, ``!!bool maybe``: KeyError, ``!!timestamp x``: AttributeError, ...).
_CONSTRUCT_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError)


def read_file(path: str | Path, what: str = "", error: type[AtomicsigError] = InputError) -> str:
    """The text of a YAML input file, for :func:`load`: UTF-8, or one line naming the file (``what`` says which
    kind of file, e.g. "sync config"). Every YAML file atomicsig reads comes through here, so they fail alike."""
    shown = f"{what} {path}" if what else str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {shown}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{shown} is not UTF-8 text") from exc


def _mark_line(exc: yaml.MarkedYAMLError) -> int:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else 0


#: Deepest flow nesting (``[``/``{``) we hand to the parser. libyaml's composer (PyYAML 6.0's CSafeLoader) recurses
#: in C per level without a depth check and crashed the process (SIGSEGV) on ``[`` * 100,000 (newer libyaml stops
#: at 1000 itself). No configuration atomicsig reads nests past a handful of levels; block nesting needs one more
#: indentation column per level, so the input size bounds it.
MAX_FLOW_DEPTH = 500


def flow_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of ``text``, outside quoted scalars and comments (a cheap, linear scan)."""
    depth = deepest = 0
    quote = ""
    prev = "\n"
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == quote:
                if quote == "'" and i + 1 < n and text[i + 1] == "'":
                    i += 1  # '' is an escaped quote inside a single-quoted scalar
                else:
                    quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"" and prev in " \t\n[{,:":
            quote = c
        elif c == "#" and prev in " \t\n":
            j = text.find("\n", i)
            i = n if j < 0 else j
            prev = "\n"
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        prev = c
        i += 1
    return deepest


def compose(text: str, source: str, error: type[AtomicsigError] = InputError) -> yaml.Node | None:
    """Parse ``text`` into a node tree (None for an empty document); syntax errors carry ``source:line``."""
    if flow_depth(text) > MAX_FLOW_DEPTH:
        raise error(f"{source}: invalid YAML: nested too deeply (more than {MAX_FLOW_DEPTH} levels)")
    try:
        return yaml.compose(text, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        raise error(f"{source}:{_mark_line(exc)}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{source}: invalid YAML: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    except RecursionError as exc:  # only without libyaml: PyYAML's composer recurses per nesting level (fuzz)
        raise error(f"{source}: invalid YAML: nested too deeply") from exc


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
    """``"; did you mean 'interval'?"`` or the list of allowed keys."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"


class Ctx:
    """Error formatting bound to one file: every message starts with ``file:line:``."""

    #: The exception raised for errors in this kind of file (PolicyError for the policy YAML, ...).
    error_type: type[AtomicsigError] = InputError

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: yaml.Node | None, message: str) -> AtomicsigError:
        line = node.start_mark.line + 1 if node is not None else 0
        return self.error_type(f"{self.source}:{line}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None) -> list[tuple[str, yaml.Node,
                                                                                              yaml.Node]]:
        """The ``(key, key node, value node)`` entries of a mapping; duplicate and unknown keys refused."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        seen: dict[str, int] = {}
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.error(k, f"{what}: keys must be strings")
            key = str(k.value)
            if key in seen:
                raise self.error(k, f"{what}: duplicate key {key!r} (first defined at line {seen[key]})")
            seen[key] = k.start_mark.line + 1
            if allowed is not None and key not in allowed:
                raise self.error(k, f"unknown key {key!r} in {what}{did_you_mean(key, allowed)}")
            out.append((key, k, v))
        return out

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != STR or not node.value:
            raise self.error(node, f"{what} must be a non-empty string")
        return str(node.value)

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != BOOL:
            raise self.error(node, f"{what} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on")

    def string_list(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode):
            return [(self.string(node, what), node)]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.error(node, f"{what} must be a key name or a non-empty list of key names")
        return [(self.string(n, f"{what} entry"), n) for n in node.value]

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == NULL

    def scalar(self, node: yaml.Node, what: str) -> Any:
        """A scalar's Python value (str, int, float, bool, None) as YAML 1.1 safe loading gives it."""
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value")
        try:
            return yaml.SafeLoader("").construct_object(node)
        except (yaml.YAMLError, *_CONSTRUCT_ERRORS):
            raise self.error(node, f"{what}{': ' if what else ''}{node.value!r} is not a valid "
                                   f"{_tag_name(node.tag)}") from None

    def top_mapping(self, text: str, what: str, allowed: tuple[str, ...]) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """The entries of a whole settings file (``serve -c``, ``webhook -c``) whose top level is a mapping of
        ``allowed`` keys: an empty or null file is no entries; duplicates anywhere, unknown keys and any other top
        level are refused with ``file:line``."""
        root = compose(text, self.source, self.error_type)
        if root is None or self.is_null(root):
            return []
        self.no_duplicates(root)
        if not isinstance(root, yaml.MappingNode):
            raise self.error(root, "top level must be a mapping")
        return self.mapping(root, what, allowed)

    def no_duplicates(self, node: yaml.Node | None) -> None:
        """Refuse a duplicate key anywhere below ``node`` (aliases are visited once), and keys that are not scalars
        (a sequence or mapping cannot be a dictionary key; yaml.v3 cannot decode one into a name either)."""
        seen: set[int] = set()
        todo = [node] if node is not None else []
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if isinstance(n, yaml.MappingNode):
                first: dict[Any, int] = {}
                for k, v in n.value:
                    if not isinstance(k, yaml.ScalarNode):
                        raise self.error(k, "found unhashable mapping key (a key must be a single value)")
                    if k.value in first:
                        raise self.error(k, f"duplicate key {k.value!r} (first defined at line {first[k.value]})")
                    first[k.value] = k.start_mark.line + 1
                    todo.extend((k, v))
            elif isinstance(n, yaml.SequenceNode):
                todo.extend(n.value)

    def construct(self, node: yaml.Node | None) -> Any:
        """Plain Python data (dicts, lists, scalars) for ``node``, after refusing duplicate keys."""
        if node is None:
            return None
        self.no_duplicates(node)
        try:
            return yaml.SafeLoader("").construct_document(node)
        except yaml.MarkedYAMLError as exc:  # e.g. ``!!set [1]``, ``!!binary "%"``
            raise self.error_type(f"{self.source}:{_mark_line(exc)}: invalid YAML: {exc.problem or exc.context}"
                                  ) from None
        except yaml.YAMLError as exc:
            raise self.error(node, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        except RecursionError:
            raise self.error(node, "invalid YAML: nested too deeply") from None
        except _CONSTRUCT_ERRORS:
            raise self._bad_scalar(node) from None

    def _bad_scalar(self, node: yaml.Node) -> AtomicsigError:
        """The error for the first scalar below ``node`` that PyYAML cannot construct (only on the failure path)."""
        todo, seen = [node], set()
        while todo:
            n = todo.pop(0)
            if id(n) in seen:
                continue
            seen.add(id(n))
            if isinstance(n, yaml.ScalarNode):
                self.scalar(n, "")
            elif isinstance(n, yaml.MappingNode):
                todo.extend(x for pair in n.value for x in pair)
            elif isinstance(n, yaml.SequenceNode):
                todo.extend(n.value)
        return self.error(node, "invalid YAML value")


def _tag_name(tag: str) -> str:
    """``tag:yaml.org,2002:int`` -> ``!!int`` for messages."""
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def load(text: str, source: str, error: type[AtomicsigError] = InputError) -> tuple[Any, yaml.Node | None]:
    """Strictly load one YAML document: (plain data, its node tree for line numbers); duplicates refused."""
    ctx = Ctx(source)
    ctx.error_type = error
    node = compose(text, source, error)
    return ctx.construct(node), node


__all__ = ["LOADER", "Ctx", "compose", "did_you_mean", "load"]
