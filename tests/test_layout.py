"""The package's shape, checked: imports flow one way through the layers the README's design map draws, inference
imports nothing from training, and the map names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ptune"

# lowest first: a module may import from its own layer or a lower one, never a higher one
LAYERS = [
    {"errors", "config", "template", "files"},
    {"data", "checkpoint", "plotting"},
    {"modeling"},
    {"tasks"},
    {"session", "evaluator"},
    {"training"},
    {"evaluation"},
    {"inference"},
    {"api", "serving", "interop", "bench", "demo", "cli", "__init__", "__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, path: Path) -> set[str]:
    """The ptune modules ``module`` imports (relative imports resolved; ``from . import x`` counts as ``x``)."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ptune."):
            found.add(node.module.removeprefix("ptune."))
    return found


def test_imports_flow_one_way_through_the_layers():
    upward = [f"{module} imports {target}" for module, path in _modules().items()
              for target in _imports(module, path) if _layer(target) > _layer(module)]
    assert upward == []


def test_inference_imports_nothing_from_training():
    seen, todo = set(), ["inference"]
    modules = _modules()
    while todo:  # everything inference reaches, directly or not
        module = todo.pop()
        if module in seen or module not in modules:
            continue
        seen.add(module)
        todo += _imports(module, modules[module])
    assert not [m for m in seen if m.split(".")[0] == "training"]


def test_the_readme_design_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Design", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"[a-z_]+/|[a-z_]+\.py", block))
    missing = []
    for module in _modules():
        parts = module.split(".")
        if parts[-1] in ("__init__", "__main__"):
            continue
        if f"{parts[-1]}.py" not in named or (len(parts) > 1 and f"{parts[0]}/" not in named):
            missing.append(module)
    assert missing == []
