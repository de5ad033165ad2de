"""The layout the architecture page promises (docs/architecture.md), read from the source itself:
no import cycle between modules, between top-level packages or between learner's sub-packages;
nothing on the torch-free path imports torch; each pipeline step is defined once."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "sim", "robot", "learner")
# the direction imports may point: a package may import only packages listed before it
TOP_LEVEL_ORDER = ("data", "sim", "robot", "learner", "run_loop")
LEARNER_ORDER = ("learner.proposals", "learner.model", "learner.train", "learner.deploy", "learner.evaluate",
                 "learner.loop", "learner.fleet", "learner.bench")
# the torch-free runtime: the proposal pipeline and what `learner.deploy.runtime` needs (export may use torch)
TORCH_FREE_ROOTS = ("learner.deploy", "learner.deploy.runtime")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    mods = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    mods["run_loop"] = ROOT / "run_loop.py"
    return mods


MODULES = _sources()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports (at any depth of the file: function-level imports count),
    resolved to modules of the project or to the first component of a third-party package."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES:
                out.add(t)
            elif t.split(".")[0] not in (*PACKAGES, "run_loop"):
                out.add(t.split(".")[0])
    out.discard(name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _group(name: str, groups: tuple[str, ...]) -> str | None:
    for g in sorted(groups, key=len, reverse=True):
        if name == g or name.startswith(g + "."):
            return g
    return None


def _group_graph(groups: tuple[str, ...]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for a, targets in GRAPH.items():
        ga = _group(a, groups)
        if ga is None:
            continue
        g[ga]
        for b in targets:
            gb = _group(b, groups)
            if gb is not None and gb != ga:
                g[ga].add(gb)
    return dict(g)


def test_the_walker_sees_the_project():
    assert len(MODULES) > 60
    assert "learner.proposals.pipeline" in GRAPH["learner.proposals.segmenter"]
    assert "torch" in GRAPH["learner.model.network"]
    # a function-level import counts (the loop builds its robot lazily)
    assert "robot.sim_robot" in GRAPH["learner.loop.setup"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("groups", [TOP_LEVEL_ORDER, LEARNER_ORDER], ids=["top-level", "learner"])
def test_packages_import_in_one_direction(groups):
    bad = []
    for a, targets in _group_graph(groups).items():
        for b in targets:
            if groups.index(b) > groups.index(a):
                bad.append(f"{a} -> {b}")
    assert bad == [], f"imports against the layering {' <- '.join(groups)}: {bad}"


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(t for t in GRAPH.get(m, ()) if t in GRAPH)
    return seen


@pytest.mark.parametrize("root", [*TORCH_FREE_ROOTS, *(m for m in MODULES if _group(m, ("learner.proposals",)))])
def test_torch_free_path_never_imports_torch(root):
    users = sorted(m for m in _closure(root) if "torch" in GRAPH[m] or "kornia" in GRAPH[m])
    assert users == [], f"{root} reaches torch through {users}"


# steps of the proposal pipeline, the input builder and the samplers: one definition each
ONCE = ("find_seeds", "decode_lowres", "propose", "propose_from_heads", "make_input", "resize_rgbd", "check_inputs",
        "scale_intrinsics", "release_contested", "clean_mask", "depth_edges", "table_pixels", "confidence_masks",
        "union_nms", "make_transforms", "sample_with_transforms", "interior_points", "mask_nms", "sample_hypotheses",
        "height_above_plane", "fit_table_plane")


def test_each_pipeline_step_is_defined_once():
    where = defaultdict(list)
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in ONCE:
                where[node.name].append(name)
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert twice == {}
