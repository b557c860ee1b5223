"""Imports flow one way: the package's folders are its layers (the README's layout lists them in
this order), and every module imports only from its own package or from the packages below it.
Lazy imports inside functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "seqmnist"

# Lowest first: the data flow, dataset -> view -> model -> kernel -> update and trainer -> run
# folder -> evaluation -> reports -> experiments -> command line and page. A module may import its
# own package's modules and any lower layer's, never a layer above its own; a helper two layers
# need goes below both.
LAYERS = [
    ["_version"],
    ["core"],
    ["data"],
    ["models"],
    ["kernels"],
    ["training"],
    ["runs"],
    ["evaluation"],
    ["reports"],
    ["experiments"],
    ["doctor", "web"],
    ["cli"],
    ["__main__", "__init__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def units() -> dict[str, list[Path]]:
    """Each layer unit (a top-level module or a package) and its Python files."""
    found = {p.stem: [p] for p in PACKAGE.glob("*.py")}
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        found[folder.name] = sorted(folder.rglob("*.py"))
    return found


def module_name(path: Path) -> list[str]:
    """``path``'s dotted name inside seqmnist, as parts (a package's __init__ is the package)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported(path: Path) -> set[str]:
    """The layer units ``path`` imports, at module level or inside functions."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                names.add(target[0])
            else:  # "from . import x" at the top: a module or package of seqmnist, or __init__
                names.update(a.name if (PACKAGE / f"{a.name}.py").exists()
                             or (PACKAGE / a.name).is_dir() else "__init__" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqmnist"):
            parts = node.module.split(".")
            names.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("seqmnist."))
    return names


def test_every_module_has_a_layer():
    assert set(units()) == set(LAYER), "add new modules and packages to LAYERS (and the README)"


@pytest.mark.parametrize("name", sorted(LAYER))
def test_imports_flow_downward(name):
    for path in units()[name]:
        upward = sorted(m for m in imported(path) - {name} if LAYER.get(m, -1) >= LAYER[name])
        assert not upward, f"{path.relative_to(PACKAGE)} ({name}) imports {upward}, which are " \
                           "not below it"


def test_the_package_reads_like_the_data_flow():
    """A handful of packages, each a layer, and nothing else but the entry points."""
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(n for names in LAYERS for n in names if (PACKAGE / n).is_dir())
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "_version.py", "cli.py", "doctor.py"]


def test_readme_lists_the_layers_in_order():
    text = (PACKAGE.parents[1] / "README.md").read_text()
    layout = text[text.index("## Layout"):]
    positions = [layout.find(f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py")
                 for names in LAYERS[:-1] for name in names if name != "_version"]
    assert -1 not in positions, "every layer is named in the README's layout"
    assert positions == sorted(positions)
