"""The package's layers hold: imports point down only, no cycles, and each outside dependency stays in its layer.

docs/architecture.md draws the layers; this test is what keeps the drawing true. It reads the source (no import
is executed), so it also sees imports inside functions and under ``TYPE_CHECKING``: a cycle hidden behind a
function-level import is still a cycle. When it fails, the message names the file, the line and the rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "atomicsig"

#: Rank of each layer: a module may import from a lower rank, or from its own layer (folder), nothing else.
#: Layers of the same rank are siblings and never import each other (signers/net; policy/serve/sync).
RANKS: dict[str, int] = {
    "errors": 0, "version": 0,
    "fsutil": 1, "logfmt": 1, "privdrop": 1,
    "format": 2,
    "openpgp": 3,
    "gnupg": 4, "keystore": 4,
    "signers": 5, "net": 5,
    "store": 6,
    "ops": 7,
    "policy": 8, "serve": 8, "sync": 8, "webhook": 8,
    "demo": 9,
    "cli": 10,
    "__main__": 11, "__init__": 11,
}

#: Third-party and stdlib modules that only some layers may import, and why.
CONFINED: dict[str, tuple[set[str], str]] = {
    "click": ({"cli"}, "the core never parses argv, prints, prompts or exits: only cli/ uses click"),
    "requests": ({"net"}, "one HTTP fetcher: every HTTP client goes through net/"),
    "urllib3": ({"net"}, "one HTTP fetcher: every HTTP client goes through net/"),
    "cheroot": ({"net"}, "one hardened HTTP server: net/httpd.py"),
    "gnupg": ({"gnupg"}, "python-gnupg is used by the gnupg layer only"),
    "pysequoia": ({"openpgp"}, "one OpenPGP engine binding: openpgp/sequoia.py (and its signing sibling) only"),
    "subprocess": ({"gnupg", "demo"},
                   "gpg and gpg-agent are run by the gnupg layer only (the demo also starts a registry and skopeo)"),
}

#: Calls that belong to the CLI: the core returns results and raises AtomicsigError instead.
CLI_ONLY_CALLS = {"print", "input", "exit", "quit", "sys.exit", "os._exit", "breakpoint"}


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module
    target: str  # dotted module (atomicsig.*) or top-level outside name
    line: int

    def __str__(self) -> str:
        return f"{path_of(self.source)}:{self.line}: {self.source} imports {self.target}"


def path_of(module: str) -> str:
    rel = Path(*module.split("."))
    candidate = PACKAGE.parent / rel
    return str((candidate / "__init__.py") if candidate.is_dir() else candidate.with_suffix(".py"))


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = modules()


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def resolve(source: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The modules an ``from … import …`` reaches: the module itself, or each submodule it names."""
    if node.level:
        base = source.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join([*base, *([node.module] if node.module else [])])
    else:
        mod = node.module or ""
    if not mod.startswith("atomicsig"):
        return [mod]
    subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [mod, *subs]


def edges() -> list[Edge]:
    out = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                out += [Edge(mod, t, node.lineno) for t in resolve(mod, path.name == "__init__.py", node)]
            elif isinstance(node, ast.Import):
                out += [Edge(mod, a.name, node.lineno) for a in node.names]
    return out


EDGES = edges()
INTERNAL = [e for e in EDGES if e.target.startswith("atomicsig.") or e.target == "atomicsig"]


def test_every_module_has_a_layer() -> None:
    unknown = sorted({layer(m) for m in MODULES} - set(RANKS))
    assert not unknown, f"modules outside every layer: {unknown}; add the folder to RANKS and docs/architecture.md"


def test_imports_point_down_only() -> None:
    wrong = []
    for e in INTERNAL:
        if e.target == "atomicsig" or e.target not in MODULES:
            continue
        src, dst = layer(e.source), layer(e.target)
        if src != dst and RANKS[dst] >= RANKS[src]:
            way = "sideways" if RANKS[dst] == RANKS[src] else "upwards"
            wrong.append(f"{e} ({way}: {src} is rank {RANKS[src]}, {dst} rank {RANKS[dst]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in INTERNAL:
        if e.target in MODULES and e.target != e.source:
            graph[e.source].add(e.target)
    cycles = strongly_connected(graph)
    lines = []
    for comp in cycles:
        inside = [str(e) for e in INTERNAL if e.source in comp and e.target in comp]
        lines.append(" <-> ".join(sorted(comp)) + "\n    " + "\n    ".join(inside))
    assert not cycles, "import cycles (function-level imports count too):\n" + "\n".join(lines)


@pytest.mark.parametrize("name", sorted(CONFINED))
def test_confined_dependencies(name: str) -> None:
    allowed, why = CONFINED[name]
    wrong = [str(e) for e in EDGES if e.target.split(".")[0] == name and layer(e.source) not in allowed]
    assert not wrong, f"{why}:\n" + "\n".join(wrong)


def test_core_does_not_print_prompt_or_exit() -> None:
    wrong = []
    for mod, path in MODULES.items():
        if layer(mod) in ("cli", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in CLI_ONLY_CALLS:
                    wrong.append(f"{path}:{node.lineno}: {name}()")
    assert not wrong, "the core reports through return values and exceptions, the CLI renders:\n" + "\n".join(wrong)


def test_the_rules_see_what_they_forbid(tmp_path: Path) -> None:
    """The checker itself: a planted upward import, cycle and confined import are found (a test that cannot
    fail is not a test)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [sorted(c) for c in strongly_connected(graph)] == [["a", "b", "c"]]
    node = ast.parse("from atomicsig.cli import common").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert resolve("atomicsig.format.reference", False, node) == ["atomicsig.cli.common"]
    assert RANKS[layer("atomicsig.cli.common")] > RANKS[layer("atomicsig.format.reference")]
    rel = ast.parse("from ..net import registry").body[0]
    assert isinstance(rel, ast.ImportFrom)
    assert resolve("atomicsig.store.http", False, rel) == ["atomicsig.net.registry"]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module (or a self-loop) are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    found.append(comp)
    return found
