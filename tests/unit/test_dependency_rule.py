"""The layering rule of docs/design: brokers -> storage -> metadata, never the reverse; the codec is sans-io.

Every ``.py`` under brokers/, storage/ and metadata/ is parsed with ``ast`` (nothing is imported), and every
import statement, wherever it sits (function bodies and ``TYPE_CHECKING`` blocks included), is resolved to
an absolute module name, relative imports too.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("brokers", "storage", "metadata")

# top-level package of a file -> top-level packages it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "metadata": frozenset({"storage", "brokers"}),
    "storage": frozenset({"brokers"}),
}
SANS_IO_DIR = ("brokers", "codec")  # brokers/codec/** must not import asyncio
SANS_IO_FORBIDDEN = frozenset({"asyncio"})

# Sub-package rules (docs/architecture.md, "Cluster (in progress)"): the cluster code is wired in by a
# composition root; the partition log, groups and handlers never reach into it, and it reaches only down.
NEVER_IMPORTS_CLUSTER = ("brokers/log/", "brokers/groups/", "brokers/handlers/")
CLUSTER_DIR = "brokers/cluster/"
CLUSTER_MAY_IMPORT = ("metadata", "brokers.config", "brokers.cluster", "brokers.routing")


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted module name of ``path`` and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imports_of(source: str, path: Path, root: Path) -> list[Import]:
    """Every module that ``source`` (the text of ``path`` under ``root``) imports, as absolute names."""
    module, is_package = _module_name(path, root)
    package = module.split(".") if is_package else module.split(".")[:-1]
    rel = path.relative_to(root).as_posix()
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            found.extend(Import(rel, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if node.module is None:  # "from . import x": x may be a submodule
                found.extend(
                    Import(rel, node.lineno, ".".join(filter(None, (target, alias.name)))) for alias in node.names
                )
            else:
                found.append(Import(rel, node.lineno, target))
    return sorted(found, key=lambda imp: imp.line)


def _project_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py") if ".venv" not in p.parts)


@functools.cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in _project_files() for imp in imports_of(path.read_text(encoding="utf-8"), path, ROOT))


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_the_scan_sees_the_project() -> None:
    files = {p.relative_to(ROOT).parts[0] for p in _project_files()}
    assert files == set(LAYERS), f"expected .py files in each of {LAYERS}, found {sorted(files)}"
    assert any(imp.module.startswith("storage.objectstore") for imp in _all_imports())


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_layers(layer: str) -> None:
    banned = FORBIDDEN[layer]
    offending = [imp for imp in _all_imports() if imp.file.startswith(f"{layer}/") and _top(imp.module) in banned]
    assert not offending, f"{layer} must not import {sorted(banned)}:\n" + "\n".join(map(str, offending))


def test_codec_imports_no_asyncio() -> None:
    prefix = "/".join(SANS_IO_DIR) + "/"
    offending = [imp for imp in _all_imports() if imp.file.startswith(prefix) and _top(imp.module) in SANS_IO_FORBIDDEN]
    assert not offending, f"{prefix} is sans-io and must not import asyncio:\n" + "\n".join(map(str, offending))


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_project(module: str) -> bool:
    return _top(module) in LAYERS


@pytest.mark.parametrize("folder", NEVER_IMPORTS_CLUSTER)
def test_log_groups_and_handlers_never_import_the_cluster(folder: str) -> None:
    imports = _all_imports()
    offending = [imp for imp in imports if imp.file.startswith(folder) and _within(imp.module, "brokers.cluster")]
    assert not offending, f"{folder} must not import brokers.cluster:\n" + "\n".join(map(str, offending))


def test_the_cluster_imports_only_metadata_config_and_itself() -> None:
    assert any(imp.file.startswith(CLUSTER_DIR) for imp in _all_imports()), "brokers/cluster/ has no imports?"
    offending = [
        imp
        for imp in _all_imports()
        if imp.file.startswith(CLUSTER_DIR)
        and _is_project(imp.module)
        and not any(_within(imp.module, allowed) for allowed in CLUSTER_MAY_IMPORT)
    ]
    assert not offending, f"{CLUSTER_DIR} may import only {CLUSTER_MAY_IMPORT}:\n" + "\n".join(map(str, offending))


# -- the scanner itself ---------------------------------------------------------------------------------


def test_scanner_resolves_every_import_form(tmp_path: Path) -> None:
    path = tmp_path / "metadata" / "sub" / "mod.py"
    source = "\n".join(
        [
            "import os, asyncio.streams as s",
            "from typing import TYPE_CHECKING",
            "if TYPE_CHECKING:",
            "    from storage.objectstore import api",
            "def f():",
            "    from ..x import y",
            "    from ... import brokers",
            "    from . import sibling",
            "    from .deeper.m import z",
        ]
    )
    modules = [imp.module for imp in imports_of(source, path, tmp_path)]
    assert modules == [
        "os",
        "asyncio.streams",
        "typing",
        "storage.objectstore",
        "metadata.x",
        "brokers",
        "metadata.sub.sibling",
        "metadata.sub.deeper.m",
    ]


def test_scanner_resolves_relative_imports_in_packages(tmp_path: Path) -> None:
    path = tmp_path / "brokers" / "codec" / "__init__.py"
    modules = [imp.module for imp in imports_of("from .frame import F\nfrom .. import server\n", path, tmp_path)]
    assert modules == ["brokers.codec.frame", "brokers.server"]


def test_violation_messages_name_file_line_and_import(tmp_path: Path) -> None:
    path = tmp_path / "storage" / "bad.py"
    (imp,) = imports_of("\n\nfrom brokers.server import Server\n", path, tmp_path)
    assert str(imp) == "storage/bad.py:3 imports brokers.server"
