"""The layer rules of DESIGN.md §2 and docs/adr/0009-ground-floor.md, read from the imports.

    pinrec top floor (cli, demo, rehearsal, airflow_stack) · dags (wiring only) · bench
                              serving (reads both layers)
                jobs (batch layer)            streaming (speed layer)
                pinrec_model (pure library)          |
                      ground floor: pinrec.core (contracts, layout, lake adapter, errors)

Every `import` counts, at module level and inside functions alike (a lazy import is still a
dependency; it only moves the cost). The checker is a pure function of {path: source}, so the
self-checks below feed it synthetic sources and prove it catches what it is meant to catch.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pinrec", "pinrec_model", "jobs", "streaming", "serving", "dags", "bench")

# The floors, named by where a module lives. Anything under `pinrec` outside `pinrec.core` is
# the top floor (cli, demo, demo_report, rehearsal, airflow_stack).
CORE, MODEL, JOBS, STREAMING, SERVING, TOP, DAGS, BENCH = (
    "pinrec.core", "pinrec_model", "jobs", "streaming", "serving", "pinrec (top floor)", "dags", "bench")

# floor -> floors of ours it must never import (its own floor is always allowed).
FORBIDDEN: dict[str, set[str]] = {
    CORE: {MODEL, JOBS, STREAMING, SERVING, TOP, DAGS, BENCH},
    MODEL: {JOBS, STREAMING, SERVING, TOP, DAGS, BENCH},
    JOBS: {STREAMING, SERVING, TOP, DAGS, BENCH},
    STREAMING: {JOBS, MODEL, SERVING, TOP, DAGS, BENCH},
    SERVING: {TOP, DAGS, BENCH},
    TOP: {DAGS, BENCH},  # `pinrec bench` is found by name (pinrec.cli GROUPS), not imported
    # tasks call `pinrec ...`; the DAG reads the one pipeline definition from the ground floor
    # (pinrec.core.pipeline, stdlib only: checked below with the heavy imports)
    DAGS: {MODEL, JOBS, STREAMING, SERVING, TOP, BENCH},
    BENCH: {DAGS},
}
# Third-party packages the ground floor may import: at module level, and inside functions
# (pyspark and delta-spark only there, for the delta-spark back end handed a session).
CORE_THIRD_PARTY_TOP = {"pyarrow", "deltalake", "numpy"}
CORE_THIRD_PARTY_LAZY = CORE_THIRD_PARTY_TOP | {"pyspark", "delta"}
# A DAG file is parsed by the scheduler every few seconds: nothing heavy at module level.
DAG_HEAVY = {"torch", "pyspark", "delta", "faiss", "pandas", "deltalake", "pyarrow", "numpy",
             "polars", "duckdb", "rocksdict", "kafka", "sklearn", "scipy"}

MAX_LINES = 400
# Files over MAX_LINES today, with their length today: a listed file may only get shorter, and
# leaves the list once it fits (so the list only shrinks). Do not add to it: split the file.
LONG_FILES = {
}


def floor_of(module: str) -> str | None:
    """The floor of a module of ours, or None for stdlib and third-party modules."""
    top = module.split(".")[0]
    if top == "pinrec":
        return CORE if module == "pinrec.core" or module.startswith("pinrec.core.") else TOP
    return {"pinrec_model": MODEL, "jobs": JOBS, "streaming": STREAMING, "serving": SERVING,
            "dags": DAGS, "bench": BENCH}.get(top)


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Import:
    importer: str     # module doing the import
    imported: str     # module imported (`from a.b import c` -> a.b.c when that is a module, else a.b)
    line: int
    module_level: bool


def _in_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: str, source: str, modules: set[str]) -> list[Import]:
    """Every import in `source`; `modules` (ours) resolves `from pkg import submodule`.
    Imports under `if TYPE_CHECKING:` never run, so they are not dependencies."""
    me = module_name(path)
    package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _in_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse, module_level)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(me, a.name, child.lineno, module_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append(Import(me, sub if sub in modules else base, child.lineno, module_level))
            inner = module_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(source, filename=path), True)
    return found


def layer_violations(sources: dict[str, str]) -> list[str]:
    """Each import that breaks a floor rule, as 'path:line: what and why'."""
    modules = {module_name(p) for p in sources}
    paths = {module_name(p): p for p in sources}
    out = []
    for path, source in sorted(sources.items()):
        for imp in imports_of(path, source, modules):
            mine, theirs = floor_of(imp.importer), floor_of(imp.imported)
            where = f"{paths[imp.importer]}:{imp.line}: {imp.importer} imports {imp.imported}"
            if mine is None:
                continue
            if theirs is not None and theirs != mine and theirs in FORBIDDEN[mine]:
                out.append(f"{where}: {mine} must not import {theirs} (DESIGN.md §2)")
            top = imp.imported.split(".")[0]
            if theirs is None and top not in sys.stdlib_module_names and top != "__future__":
                allowed = CORE_THIRD_PARTY_TOP if imp.module_level else CORE_THIRD_PARTY_LAZY
                if mine == CORE and top not in allowed:
                    out.append(f"{where}: the ground floor may use only {sorted(allowed)} "
                               f"{'at module level' if imp.module_level else 'inside functions'}")
                if mine == DAGS and imp.module_level and top in DAG_HEAVY:
                    out.append(f"{where}: a DAG file imports {top} at parse time; import it "
                               f"inside the task, or better call `pinrec <job>`")
    return out


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """Strongly connected groups of our modules (size > 1, or a module importing itself),
    over module-level and function-level imports alike (Tarjan, iterative)."""
    modules = {module_name(p) for p in sources}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path, source in sources.items():
        for imp in imports_of(path, source, modules):
            target = imp.imported
            while target and target not in modules:  # `import a.b.c` of a function's module
                target = target.rpartition(".")[0]
            if target and not _is_package(sources, target):
                graph[imp.importer].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    cycles.append(sorted(group))
    return sorted(cycles)


def _is_package(sources: dict[str, str], module: str) -> bool:
    # A package's __init__ only names its modules; importing a.b runs a/__init__ first, but
    # that is no dependency of the importer on a's other modules.
    return any(p.endswith("__init__.py") and module_name(p) == module for p in sources)


def long_files(sources: dict[str, str], allowed: dict[str, int]) -> list[str]:
    out = []
    for path, source in sorted(sources.items()):
        n = len(source.splitlines())
        limit = allowed.get(path, MAX_LINES)
        if n > limit:
            out.append(f"{path}: {n} lines, over {limit}" + (
                " (its length when it was allow-listed: split it, do not grow it)"
                if path in allowed else f": split it (STYLE.md: files under ~{MAX_LINES} lines)"))
    for path, n in sorted(allowed.items()):
        if path in sources and len(sources[path].splitlines()) <= MAX_LINES:
            out.append(f"{path} now fits in {MAX_LINES} lines: remove it from LONG_FILES")
    return out


def project_sources() -> dict[str, str]:
    return {p.relative_to(REPO).as_posix(): p.read_text()
            for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


# ------------------------------------------------------------------------------------ rules
def test_every_import_keeps_to_its_floor():
    assert layer_violations(project_sources()) == []


def test_no_import_cycles_between_modules():
    assert import_cycles(project_sources()) == []


def test_files_stay_under_the_line_limit():
    sources = project_sources()
    assert set(LONG_FILES) <= set(sources), "an allow-listed file was removed: drop it from LONG_FILES"
    assert long_files(sources, LONG_FILES) == []


def test_the_rules_cover_every_package():
    sources = project_sources()
    assert {floor_of(module_name(p)) for p in sources} == set(FORBIDDEN)


# ------------------------------------------------------------------------------- self-checks
def test_checker_catches_the_speed_layer_importing_the_batch_layer():
    sources = {"streaming/x.py": "def f():\n    from jobs.score import run\n",
               "jobs/score.py": "", "jobs/__init__.py": "", "streaming/__init__.py": ""}
    assert layer_violations(sources) == [
        "streaming/x.py:2: streaming.x imports jobs.score: streaming must not import jobs (DESIGN.md §2)"]


def test_checker_resolves_from_package_import_submodule_and_relative_imports():
    sources = {"pinrec/core/a.py": "from pinrec import demo\nfrom .. import cli\n",
               "pinrec/demo.py": "", "pinrec/cli.py": "", "pinrec/__init__.py": "",
               "pinrec/core/__init__.py": ""}
    assert [v.split(": ", 1)[1] for v in layer_violations(sources)] == [
        "pinrec.core.a imports pinrec.demo: pinrec.core must not import pinrec (top floor) (DESIGN.md §2)",
        "pinrec.core.a imports pinrec.cli: pinrec.core must not import pinrec (top floor) (DESIGN.md §2)"]


def test_checker_catches_heavy_imports_in_dags_and_the_ground_floor():
    sources = {"dags/d.py": "import json\nimport pyarrow as pa\ndef task():\n    import torch\n",
               "pinrec/core/c.py": "import numpy\nimport torch\ndef f():\n    import pyspark\n"}
    assert [v.split(": ")[0] for v in layer_violations(sources)] == ["dags/d.py:2", "pinrec/core/c.py:2"]


def test_checker_ignores_type_checking_imports_and_finds_lazy_cycles():
    sources = {"serving/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from serving.c import C\nimport serving.b\n",
               "serving/b.py": "def f():\n    from serving.a import g\n",
               "serving/c.py": "from serving.a import x\n"}
    assert import_cycles(sources) == [["serving.a", "serving.b"]]


def test_checker_holds_long_files_to_their_listed_length():
    short, long_ = "x = 1\n" * 10, "x = 1\n" * (MAX_LINES + 5)
    assert long_files({"a.py": short}, {}) == []
    assert long_files({"a.py": long_}, {})[0].startswith("a.py: 405 lines, over 400")
    assert long_files({"a.py": long_}, {"a.py": MAX_LINES + 5}) == []
    assert long_files({"a.py": long_ + "y = 2\n"}, {"a.py": MAX_LINES + 5})[0].startswith("a.py: 406 lines")
    assert long_files({"a.py": short}, {"a.py": MAX_LINES + 5}) == [
        f"a.py now fits in {MAX_LINES} lines: remove it from LONG_FILES"]


def test_what_the_dag_imports_of_ours_is_stdlib_only():
    """The DAG file may import the ground floor's pipeline definition, which must stay as light
    as the DAG itself: stdlib only, through packages whose __init__ imports nothing."""
    import sys

    sources = project_sources()
    dag_imports = {i.imported for path, src in sources.items() if path.startswith("dags/")
                   for i in imports_of(path, src, {module_name(p) for p in sources})
                   if floor_of(i.imported) is not None}
    assert dag_imports == {"pinrec.core.pipeline"}
    modules = {module_name(p): p for p in sources}
    todo, seen = ["pinrec", "pinrec.core", "pinrec.core.pipeline"], set()
    while todo:  # what importing the pipeline runs at module level, ours followed through
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = modules[mod]
        for i in imports_of(path, sources[path], set(modules)):
            if not i.module_level:
                continue
            if floor_of(i.imported) is not None:
                todo.append(i.imported)
            else:
                top = i.imported.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{path} imports {top}"
    assert "pinrec.core.layout" in seen  # the walk did follow our own imports
