"""Docstrings name only modules, objects and files that exist: a reader who follows one arrives somewhere."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])
DOTTED = re.compile(r"(?<![\w.])pipeline(?:\.\w+)+")
FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.(?:py|json|md|conf|cfg|toml))\b")
# names a docstring may use for files the user or the run creates, not the repository's own
RUN_FILES = re.compile(r"^(?:RUN_DIR/|runs/|data/|models/|.*(?:metrics|evaluation|manifest|benchmark|config|datalist|dataset|"
                       r"denoise|dose_audit|provenance|bench_data|hostile_inputs|gpu_check|summary|record|settings|noise|utility|model|best|last|checkpoint|out|x|y|"
                       r"other|my_\w*|your_\w*)\.(?:json|pt|ts)$)")


def _docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                found.append((getattr(node, "lineno", 1), text))
    return found


def _resolves(dotted: str) -> bool:
    parts = dotted.rstrip(".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                try:
                    target = importlib.import_module(f"{target.__name__}.{name}")
                except (ImportError, AttributeError):
                    return False
            else:
                target = getattr(target, name)
        return True
    return False


def _file_exists(name: str) -> bool:
    if (ROOT / name).exists() or (ROOT / "bundles" / "pancreas_ct_unoise" / name).exists():
        return True
    tail = Path(name).name
    return any(p.name == tail for p in ROOT.rglob(tail) if ".venv" not in p.parts and ".git" not in p.parts)


def test_docstrings_name_only_modules_and_files_that_exist() -> None:
    missing = []
    for path in SOURCES:
        for line, text in _docstrings(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            missing += [f"{where}: {name}" for name in DOTTED.findall(text) if not _resolves(name)]
            missing += [f"{where}: {name}" for name in FILE.findall(text)
                        if not RUN_FILES.match(name) and not _file_exists(name)]
    assert not missing, "docstrings name what does not exist:\n" + "\n".join(missing)


def test_package_docstrings_name_their_own_modules() -> None:
    missing = []
    for init in sorted((ROOT / "pipeline").rglob("__init__.py")):
        package = importlib.import_module(".".join(init.parent.relative_to(ROOT).parts))
        text = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        listing = " ".join(p for p in text.split("\n\n") if p.lstrip().startswith(("Modules", "Packages")))
        for name in re.findall(r"``(\w+)``", listing):  # the paragraph that lists the package's parts
            if not (hasattr(package, name) or (init.parent / f"{name}.py").is_file() or (init.parent / name).is_dir()):
                missing.append(f"{init.relative_to(ROOT)}: ``{name}``")
    assert not missing, "package docstrings name modules that do not exist:\n" + "\n".join(missing)
