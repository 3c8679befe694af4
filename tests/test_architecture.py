"""The shape of the package (docs/architecture.md, "The house"): no import cycles, small modules, stages that only
depend downwards. Read from the source with ``ast``: every import counts, inside functions and ``TYPE_CHECKING``
blocks included."""

from __future__ import annotations

import ast
from pathlib import Path

import echopanel

PACKAGE = Path(echopanel.__file__).resolve().parent
MAX_LINES = 500

# Each stage may import only the stages listed for it (besides itself). Leaves import nothing of the package but
# other leaves; the settings (config) hold every stage's settings, the pure policies' included.
LEAVES = {"", "events", "audio", "evaluation", "metrics"}  # "": the package's own __init__ (its version)
ALLOWED = {
    "config": LEAVES | {"flow"},
    "flow": LEAVES,
    "inference": LEAVES,
    "recognizer": LEAVES | {"config", "inference"},
    "engines": LEAVES | {"config", "flow", "inference", "recognizer"},
    "speakers": LEAVES | {"config"},
    "storage": LEAVES | {"config"},
    "analysis": LEAVES | {"storage"},
    "protocol": LEAVES | {"engines"},
    "session": LEAVES | {"config", "flow", "engines", "speakers", "storage", "analysis"},
    "batch": LEAVES | {"config", "engines"},
    "server": LEAVES
    | {"config", "flow", "inference", "engines", "speakers", "storage", "analysis", "protocol", "session", "batch"},
    "client": LEAVES | {"flow", "protocol"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (a ``from pkg import mod`` counts as importing ``pkg.mod``)."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("echopanel"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("echopanel"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles_among_modules() -> None:
    g = graph()
    assert len(g) > 50  # the walk found the package
    assert cycles(g) == []


def test_no_import_cycles_among_stages() -> None:
    stages: dict[str, set[str]] = {}
    for module, deps in graph().items():
        stages.setdefault(stage(module), set()).update(stage(d) for d in deps if stage(d) != stage(module))
    assert cycles(stages) == []


def test_each_stage_depends_only_downwards() -> None:
    wrong = []
    for module, deps in graph().items():
        allowed = ALLOWED.get(stage(module))
        if allowed is None:
            continue
        for dep in deps:
            if stage(dep) != stage(module) and stage(dep) not in allowed:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_leaves_import_only_leaves() -> None:
    wrong = [f"{m} -> {d}" for m, deps in graph().items() if stage(m) in LEAVES for d in deps if stage(d) not in LEAVES]
    assert wrong == []


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    code = "def f():\n    from echopanel.session import finalize\n\nif TYPE_CHECKING:\n    import echopanel.events\n"
    path = tmp_path / "mod.py"
    path.write_text(code)
    known = {"echopanel.session.finalize": path, "echopanel.session": path, "echopanel.events": path}
    assert imports("echopanel.x", path, known) == {"echopanel.session.finalize", "echopanel.events"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
