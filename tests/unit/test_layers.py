"""Every import points down the layers that docs/architecture.md draws.

The table in that file is the rule: each module of src/mlwitness belongs to the package (or
top-level module) the table names, and may import its own package or a lower layer's —
never a higher layer's, nor another package on its own layer. Imports are read with `ast`,
top-level and inside functions (lazy imports count: they run) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import mlwitness

SRC = Path(mlwitness.__file__).resolve().parent
ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
ROOT = "mlwitness"


def layers_from(markdown: str) -> dict[str, int]:
    """`{unit: layer}` from the "## Layers" table: every `name` in backticks in the second
    column of a row whose first column is a number. A unit is a package or top-level module
    under mlwitness (`ledger`, `codec`), or `mlwitness` for the package's own __init__."""
    section = markdown.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row is None:
            continue
        for name in re.findall(r"`([\w.]+)`", row[2]):
            assert name not in layers, f"{name} is on two rows of the layer table"
            layers[name] = int(row[1])
    return layers


def module_names(src: Path) -> dict[str, Path]:
    """`{dotted name: path}` of every module under `src` (a package named mlwitness)."""
    names = {}
    for path in sorted(src.rglob("*.py")):
        parts = [ROOT, *path.relative_to(src).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, known: set[str]) -> list[str]:
    """The mlwitness modules `module` imports, wherever in the file the import stands.
    `from P import n` imports P.n when that is a module, else P; relative imports are
    resolved against `module`'s package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append(submodule if submodule in known else source)
    return [name for name in found if name == ROOT or name.startswith(ROOT + ".")]


def unit_of(module: str, layers: dict[str, int]) -> str | None:
    """The longest table name that is `module` or a package holding it."""
    if module == ROOT:
        return ROOT if ROOT in layers else None
    parts = module.split(".")[1:]
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in layers:
            return name
    return None


@dataclass(frozen=True)
class Upward:
    importer: str
    imported: str
    importer_unit: str
    imported_unit: str
    importer_layer: int
    imported_layer: int

    def __str__(self) -> str:
        return (f"{self.importer} ({self.importer_unit}, layer {self.importer_layer}) imports "
                f"{self.imported} ({self.imported_unit}, layer {self.imported_layer})")


def check(src: Path, layers: dict[str, int]) -> tuple[list[str], list[str], list[Upward]]:
    """(modules the table does not place, table names with no module, imports that break
    the rule)."""
    modules = module_names(src)
    unplaced = sorted(m for m in modules if unit_of(m, layers) is None)
    units = {unit_of(m, layers) for m in modules}
    stale = sorted(name for name in layers if name not in units)
    broken = []
    for module, path in modules.items():
        unit = unit_of(module, layers)
        for imported in imports_of(module, path, set(modules)):
            other = unit_of(imported, layers)
            if unit is None or other is None or other == unit:
                continue
            if layers[other] >= layers[unit]:
                broken.append(Upward(module, imported, unit, other, layers[unit], layers[other]))
    return unplaced, stale, sorted(set(broken), key=str)


LAYERS = layers_from(ARCHITECTURE.read_text())


def test_the_table_places_every_module_and_names_only_what_exists() -> None:
    unplaced, stale, _ = check(SRC, LAYERS)
    assert not unplaced, f"not in docs/architecture.md's layer table: {unplaced}"
    assert not stale, f"in docs/architecture.md's layer table but not in src/mlwitness: {stale}"


def test_no_module_imports_a_higher_layer_or_a_sibling_package() -> None:
    _, _, broken = check(SRC, LAYERS)
    assert not broken, "imports against the layers of docs/architecture.md:\n" + "\n".join(
        f"  {b}" for b in broken)


def test_the_check_sees_upward_sideways_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself, on a made-up package: it must not pass by seeing nothing."""
    src = tmp_path / ROOT
    files = {
        "__init__.py": "",
        "errors.py": "",
        "low/__init__.py": "",
        "low/a.py": "from mlwitness import errors\nfrom . import b\n",
        "low/b.py": "def f():\n    from mlwitness.high import c\n",  # lazy, upward
        "side/__init__.py": "from ..low import a\n",  # relative, same layer
        "high/__init__.py": "",
        "high/c.py": "import mlwitness.low.a\nfrom mlwitness import low\n",  # downward
        "high/d.py": "from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from mlwitness.top import e\n",  # upward
        "top.py": "from mlwitness.high.c import x\n",
        "loose.py": "",
    }
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    table = ("## Layers\n\n| layer | packages |\n|---|---|\n| 0 | `errors` |\n"
             "| 1 | `low`, `side` |\n| 2 | `high`, `gone` |\n| 3 | `top` |\n\n## Next\n"
             "| 9 | `ignored` |\n")
    unplaced, stale, broken = check(src, layers_from(table))
    assert unplaced == ["mlwitness", "mlwitness.loose"]
    assert stale == ["gone"]
    assert [str(b) for b in broken] == [
        "mlwitness.high.d (high, layer 2) imports mlwitness.top (top, layer 3)",
        "mlwitness.low.b (low, layer 1) imports mlwitness.high.c (high, layer 2)",
        "mlwitness.side (side, layer 1) imports mlwitness.low.a (low, layer 1)",
    ]


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by their base name (tests/ has no packages): two files of
    one name in different folders stop the whole run at collection."""
    tests = Path(__file__).resolve().parents[1]
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
