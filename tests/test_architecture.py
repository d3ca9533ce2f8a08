"""The packages' import graph: imports flow one way (no cycles; the lab ``ropekit_lab``
imports the library ``ropekit``, never the reverse), and the only imports inside
functions are the lazy ones that keep ``import ropekit`` light (backends, plots)."""

from __future__ import annotations

import ast
from pathlib import Path

import ropekit
import ropekit_lab

ROOT = Path(ropekit.__file__).parent
LAB = Path(ropekit_lab.__file__).parent
SRC = ROOT.parent  # both packages live in src/ (LAB.parent, checked below)


def files() -> list[Path]:
    return [*ROOT.rglob("*.py"), *LAB.rglob("*.py")]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module-level edges between ropekit and ropekit_lab modules, and every
    function-level import."""
    edges: dict[str, set[str]] = {}
    inner: list[tuple[str, str]] = []
    modules = {module_name(p) for p in files()}
    for path in files():
        name = module_name(path)
        tree = ast.parse(path.read_text())
        edges.setdefault(name, set())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(name, path.name == "__init__.py", node)
                # `from . import triton` imports the submodule; `from .x import f`, module x
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            targets = [t for t in targets if t in modules and t != name]
            if id(node) in top or _in_type_checking(tree, node):
                edges[name].update(targets)
            elif targets:
                inner.append((name, targets[0]))
    return edges, inner


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(stmt, ast.If)
        and "TYPE_CHECKING" in ast.unparse(stmt.test)
        and any(n is node for n in ast.walk(stmt))
        for stmt in tree.body
    )


def test_no_import_cycles() -> None:
    edges, _ = graph()
    # a package's __init__ re-exporting its children is not a cycle back to the child
    def deps(m: str) -> set[str]:
        return {t for t in edges.get(m, ()) if not m.startswith(t + ".") and not t.startswith(m + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(deps(m)):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_library_never_imports_the_lab() -> None:
    """Nothing under src/ropekit/ imports ropekit_lab: not at module level, not inside a
    function, not by name through importlib."""
    assert LAB.parent == SRC
    edges, inner = graph()
    library = [m for m in edges if m == "ropekit" or m.startswith("ropekit.")]
    assert "ropekit.cli.main" in library and "ropekit_lab.cli.main" in edges
    for m in library:
        assert not {t for t in edges[m] if t.split(".")[0] == "ropekit_lab"}, (m, edges[m])
    assert not [(m, t) for m, t in inner if m in library and t.split(".")[0] == "ropekit_lab"]
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("ropekit_lab") for n in names), path
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("ropekit_lab."), (path, node.value)
    # and the lab does build on the library
    assert any(t.startswith("ropekit.") for t in edges["ropekit_lab.model"])


def test_apply_layers_flow_one_way() -> None:
    """api -> checks/dispatch -> autograd/formula -> positions/errors; kernels never
    import the public layer."""
    edges, _ = graph()
    public = {"ropekit.apply.api", "ropekit.apply"}
    for m, targets in edges.items():
        if m.startswith(("ropekit.apply.cpu", "ropekit.apply.triton", "ropekit.apply.compiled",
                         "ropekit.apply.formula", "ropekit.apply.autograd", "ropekit.apply.checks")):
            assert not targets & (public | {"ropekit.apply.dispatch"}), (m, targets)


def test_rotation_core_imports_inside_functions_only_lazy_backends() -> None:
    """In the rotation core (apply/, positions, modules) the only function-level import is
    the lazy registration of the Triton backend (which imports triton). (The CLI imports
    lazily for a fast ``--help``.)"""
    _, inner = graph()
    core = ("ropekit.apply", "ropekit.positions", "ropekit.modules")
    allowed = {("ropekit.apply.dispatch", "ropekit.apply.triton"), ("ropekit.apply.triton", "ropekit.apply.triton.ops")}
    unexpected = [(m, t) for m, t in inner if m.startswith(core) and (m, t) not in allowed]
    assert not unexpected, unexpected


def test_config_and_hf_codec_import_one_way_at_module_level() -> None:
    """``ropekit.hf`` (the Hugging Face codec) imports ``ropekit.config``; ``ropekit.config``
    and the frequency math never import the codec, not even inside a function."""
    edges, inner = graph()
    core = ("ropekit.config", "ropekit.frequencies", "ropekit.errors")
    for m, targets in edges.items():
        if m.startswith(core):
            assert not {t for t in targets if t.startswith("ropekit.hf")}, (m, targets)
    assert "ropekit.config" in edges["ropekit.hf.config"]
    between = [(m, t) for m, t in inner
               if m.startswith(("ropekit.hf", *core)) and t.startswith(("ropekit.hf", *core))]
    assert not between, between
    assert "ropekit.integrations" not in {m.rsplit(".", 1)[0] for m in edges}
