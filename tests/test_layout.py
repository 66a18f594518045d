"""The package's shape (docs/DESIGN.md, "Layout"): each folder of reid/ is a stage, a module
imports only from its own stage or the stages below it, the module graph has no cycle, no
module is much over 350 lines, and the three scripts are thin layers over reid/cli."""

import ast
import os

from tests.conftest import ROOT

# Lowest first. The package root (reid/__init__.py, reid/report.py) sits above every stage; any
# module may read the root's __version__ (the root imports nothing at import time).
STAGES = ("runtime", "data", "models", "metrics", "attacks", "training", "defences", "evaluation", "cli")
TOP = len(STAGES)
NAMES = STAGES + ("package root",)
MAX_LINES = 360  # "no module over ~350 lines"
SCRIPTS = {"train.py": "reid.cli.train", "gen_adv.py": "reid.cli.attack", "sort_dataset.py": "reid.cli.sort"}


def modules(root):
    """{dotted module name: file path} of every module of the package under `root`/reid."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, "reid")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def stage(module):
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else TOP


def imports(module, path, known):
    """The modules of the package that `module` imports (anywhere in the file, relative imports
    resolved; `from package import submodule` is an import of the submodule)."""
    is_package = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "reid")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "reid":
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known and m != module}


def layout_problems(root):
    """Every upward import, cycle and over-long module of the package under `root`, as lines."""
    known = modules(root)
    graph = {m: imports(m, p, known) for m, p in known.items()}
    problems = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if stage(t) > stage(m) and t != "reid":
                problems.append(f"{m} imports {t}: stage {NAMES[stage(t)]} is above {NAMES[stage(m)]}")
    state, path = {}, []

    def visit(m):  # depth-first search; a grey node met again closes a cycle
        state[m] = "grey"
        path.append(m)
        for t in sorted(graph[m] - {"reid"}):
            if state.get(t) == "grey":
                problems.append("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = "black"

    for m in sorted(graph):
        if m not in state and m != "reid":  # the root's lazy aliases import only when used
            visit(m)
    for m, p in sorted(known.items()):
        lines = sum(1 for _ in open(p))
        if lines > MAX_LINES:
            problems.append(f"{os.path.relpath(p, root)}: {lines} lines (at most {MAX_LINES})")
    return problems


def test_stages_import_downwards_without_cycles():
    assert layout_problems(ROOT) == []


def test_other_stages_are_imported_through_their_door():
    """`from reid.models import load_model`, not `from reid.models.checkpoint import ...`, across stages
    (a door may hand out a module, as `from reid.runtime import distributed`)."""
    known = modules(ROOT)
    for module, path in sorted(known.items()):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("reid."):
                if stage(node.module) != stage(module):
                    door = ".".join(node.module.split(".")[:2])
                    assert node.module == door, f"{module} imports {node.module}: import from {door}"


def test_every_module_belongs_to_a_stage():
    for module in modules(ROOT):
        assert stage(module) < TOP or module in ("reid", "reid.report"), f"{module} is outside the stages"


def test_the_checker_finds_an_upward_import_a_cycle_and_a_long_module(tmp_path):
    """The rule above can fail: planted violations in a copy-sized fake package are reported."""
    files = {
        "reid/__init__.py": "",
        "reid/attacks/__init__.py": "",
        "reid/attacks/core.py": "from reid.evaluation.run import go\n",  # upward
        "reid/evaluation/__init__.py": "",
        "reid/evaluation/run.py": "from .loop import step\n\ndef go():\n    pass\n",
        "reid/evaluation/loop.py": "from reid.evaluation import run\nstep = 1\n",  # run -> loop -> run
        "reid/runtime/__init__.py": "x = 1\n" * (MAX_LINES + 1),
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    problems = layout_problems(str(tmp_path))
    assert "reid.attacks.core imports reid.evaluation.run: stage evaluation is above attacks" in problems
    assert "import cycle: reid.evaluation.run -> reid.evaluation.loop -> reid.evaluation.run" in problems
    assert f"reid/runtime/__init__.py: {MAX_LINES + 1} lines (at most {MAX_LINES})" in problems
    assert len(problems) == 3


def test_scripts_are_thin_layers_over_reid_cli():
    for script, module in SCRIPTS.items():
        path = os.path.join(ROOT, script)
        tree = ast.parse(open(path).read())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported == {module}, f"{script} imports {imported}"
        assert sum(1 for _ in open(path)) <= 15, f"{script} holds code: it belongs in {module}"
