"""Imports flow one way: each module imports only from the layers below it (the README's layout
section lists them in this order). Lazy imports inside functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "seqmnist"

# Lowest first. A module may import any module of a lower layer, never one of its own layer or
# above; a helper two layers need goes below both.
LAYERS = [
    ["_version", "errors"],
    ["fileio", "system", "stats", "published", "registry"],
    ["download"],
    ["data"],
    ["views"],
    ["models"],
    ["config"],
    ["record"],
    ["lstm_kernel"],
    ["backends"],
    ["parallel"],
    ["steps"],
    ["storage"],
    ["evaluation"],
    ["plots"],
    ["recorder"],
    ["training"],
    ["slots"],
    ["keras_files"],
    ["keras_import"],
    ["analysis"],
    ["reports"],
    ["comparison"],
    ["sweep"],
    ["cluster"],
    ["export"],
    ["images"],
    ["explain_page"],
    ["explainer"],
    ["doctor", "web"],
    ["cli"],
    ["__main__", "__init__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


SUBPACKAGES = ("web", "models")  # each one layer: its modules are checked as that layer


def modules() -> dict[str, list[Path]]:
    found = {p.stem: [p] for p in PACKAGE.glob("*.py")}
    for sub in SUBPACKAGES:
        found[sub] = sorted((PACKAGE / sub).glob("*.py"))
    return found


def imported(path: Path, package_depth: int) -> set[str]:
    """The seqmnist modules ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = (node.module or "").split(".")
            if node.level == package_depth:  # relative to the package root
                if node.module:
                    names.add(parts[0])
                else:  # "from . import x": a module, or a name from the package's __init__
                    names.update(a.name if (PACKAGE / f"{a.name}.py").exists()
                                 or (PACKAGE / a.name).is_dir() else "__init__"
                                 for a in node.names)
            elif node.level < package_depth:  # inside a subpackage: its own modules
                names.add(path.parent.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqmnist"):
            parts = node.module.split(".")
            names.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("seqmnist."))
    return names


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYER), "add new modules to LAYERS (and to the README's layout)"


@pytest.mark.parametrize("name", sorted(LAYER))
def test_imports_flow_downward(name):
    for path in modules()[name]:
        depth = 2 if path.parent.name in SUBPACKAGES else 1
        upward = sorted(m for m in imported(path, depth) - {name}
                        if LAYER.get(m, -1) >= LAYER[name])
        assert not upward, f"{path.name} ({name}) imports {upward}, which are not below it"


def test_readme_lists_the_layers_in_order():
    text = (PACKAGE.parents[1] / "README.md").read_text()
    layout = text[text.index("## Layout"):]
    positions = [layout.find(f"{name}.py" if name not in SUBPACKAGES else f"{name}/")
                 for names in LAYERS[1:-1] for name in names]
    assert -1 not in positions, "every module is named in the README's layout"
    assert positions == sorted(positions)
