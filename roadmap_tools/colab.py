"""What a lesson needs in Colab: the extras its setup cell installs, Colab's preinstalled packages, and the static
check that every import of a notebook is covered by one or the other."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints" / "colab.txt"
PACKAGE = "llm-roadmap"
_SPEC = re.compile(r"llm-roadmap(?:\[([a-z0-9_,\s-]*)\])?\s*@\s*git\+https://github\.com/")


@cache
def preinstalled() -> frozenset[str]:
    """Canonical names of the packages Colab has before any setup cell runs (constraints/colab.txt)."""
    names = set()
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return frozenset(names)


@cache
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extras() -> dict[str, list[str]]:
    """The package's extras as pyproject.toml declares them."""
    return dict(_pyproject()["optional-dependencies"])


def packages_of(chosen: list[str]) -> set[str]:
    """Canonical names of the distributions that `llm-roadmap[chosen]` installs directly (base dependencies included,
    extras that name other extras followed)."""
    found = {canonicalize_name(Requirement(r).name) for r in _pyproject()["dependencies"]}
    todo, seen = list(chosen), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in extras():
            raise ValueError(f"{PACKAGE} has no extra {extra!r}; pyproject.toml declares {sorted(extras())}")
        seen.add(extra)
        for line in extras()[extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == PACKAGE:
                todo += sorted(req.extras)
            else:
                found.add(canonicalize_name(req.name))
    return found


def with_dependencies(names: set[str]) -> set[str]:
    """`names` and everything they depend on, as installed here (a transitive import such as regex, which
    transformers brings, is covered by transformers)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return found


def setup_extras(setup_source: str) -> list[str] | None:
    """The extras a setup cell installs (`llm-roadmap[a,b] @ git+https://github.com/...`), or None if it installs no
    course package."""
    match = _SPEC.search(setup_source)
    if not match:
        return None
    return [e.strip() for e in (match.group(1) or "").split(",") if e.strip()]


def _optional(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `try: ... except ImportError`, or in an `if` whose test asks
    `importlib.util.find_spec(...)` (optional: the notebook handles their absence)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "find_spec(" in ast.unparse(node.test):
            for inner in [*node.body, *node.orelse]:
                lines |= {n.lineno for n in ast.walk(inner) if isinstance(n, (ast.Import, ast.ImportFrom))}
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                or isinstance(h.type, ast.Tuple) and any(getattr(e, "id", "") in ("ImportError", "ModuleNotFoundError")
                                                         for e in h.type.elts)
                for h in node.handlers):
            for inner in node.body:
                lines |= {n.lineno for n in ast.walk(inner) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def imported_modules(code: str) -> set[str]:
    """Top-level modules a code cell imports unconditionally (lines starting with % or ! are skipped)."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    optional = _optional(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in optional:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def import_problems(nb, setup_source: str) -> list[str]:
    """Imports of the notebook that Colab would lack: neither preinstalled there nor installed by the setup cell."""
    chosen = setup_extras(setup_source)
    if chosen is None:
        return []  # the setup cell check reports this
    covered = with_dependencies(set(preinstalled()) | packages_of(chosen))
    owners = metadata.packages_distributions()
    written = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\.py\b", "\n".join(
        "".join(c.source) for c in nb.cells if c.cell_type == "code")))  # modules the notebook writes itself
    problems = []
    for module in sorted(set().union(*(imported_modules("".join(c.source)) for c in nb.cells
                                       if c.cell_type == "code"))):
        if module in sys.stdlib_module_names or module == "llm_roadmap" or module in written:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists:
            problems.append(f"imports {module!r}, which no installed package provides (install it, or import it "
                            "inside try/except ImportError if it is optional)")
        elif not dists & covered:
            extra = [name for name in extras() if name not in ("all", "dev") and dists & packages_of([name])]
            hint = f"add the extra {extra[0]!r} to the setup cell" if extra else (
                f"add {sorted(dists)[0]} to an extra in pyproject.toml and install that extra")
            problems.append(f"imports {module!r} ({', '.join(sorted(dists))}), which Colab lacks and the setup cell "
                            f"does not install: {hint}")
    return problems
