"""The package's layers, enforced: every module's imports are read with ``ast`` (all of them: module
level, inside functions, under ``TYPE_CHECKING``) and checked against the forbidden edges the README's
"Architecture" section lists.

- ``cosyml.models`` (the networks, their checkpoints and generation) imports none of ``synth``,
  ``evaluation``, ``train``, ``data``, ``registry``, ``tracking``, ``commands``, ``cli``, ``config``.
- The components (``data``, ``features``, ``models``, ``train``, ``evaluation``, ``synth``, ``text``)
  import none of ``mlflow``, ``argparse``, ``cosyml.tracking``, ``cosyml.cli``, ``cosyml.commands``, and
  not ``cosyml.config`` either (:data:`CONFIG_ALLOWED` is empty; an entry that no longer imports
  ``cosyml.config`` fails the test until it is removed).
- ``cosyml.models`` has no import cycle (imports under ``if TYPE_CHECKING:`` aside).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cosyml"

COMPONENTS = ("data", "features", "models", "train", "evaluation", "synth", "text")
MODELS_FORBIDDEN = tuple(
    f"cosyml.{name}"
    for name in ("synth", "evaluation", "train", "data", "registry", "tracking", "commands", "cli", "config")
)
COMPONENTS_FORBIDDEN = ("mlflow", "argparse", "cosyml.tracking", "cosyml.cli", "cosyml.commands", "cosyml.config")

#: Components that may still import ``cosyml.config``: none since every component has its own typed config.
#: Never add one.
CONFIG_ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. cosyml.models.llm
    target: str  # the imported module (or module.name for ``from m import name``)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    """``root/models/llm.py`` -> ``cosyml.models.llm`` (``root`` is the package folder)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import statement in ``source`` (the text of ``module``), relative ones resolved."""
    tree = ast.parse(source)
    type_only_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                type_only_lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        type_only = node_line(node) in type_only_lines
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                source_module = f"{base}.{node.module}" if node.module else base
            else:
                source_module = node.module or ""
            yield Import(module, source_module, node.lineno, type_only)
            for alias in node.names:  # ``from cosyml import config`` imports the module cosyml.config
                yield Import(module, f"{source_module}.{alias.name}", node.lineno, type_only)


def node_line(node: ast.AST) -> int:
    return getattr(node, "lineno", 0)


def package_imports(root: Path = PACKAGE) -> list[Import]:
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        found.extend(imports_of(path.read_text(encoding="utf-8"), module_name(path, root), path.name == "__init__.py"))
    return found


def _hits(target: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if target == prefix or target.startswith(prefix + "."):
            return prefix
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(found: list[Import], config_allowed: dict[str, str] = CONFIG_ALLOWED) -> list[str]:
    """One line per forbidden import (``module:line imports target (rule)``), allow-listed ones left out."""
    lines: set[str] = set()
    for imp in found:
        if _in(imp.module, "cosyml.models") and (hit := _hits(imp.target, MODELS_FORBIDDEN)):
            lines.add(f"{imp.module}:{imp.line} imports {hit} (models must not import {hit})")
        component = next((c for c in COMPONENTS if _in(imp.module, f"cosyml.{c}")), None)
        if component and (hit := _hits(imp.target, COMPONENTS_FORBIDDEN)):
            if hit == "cosyml.config" and imp.module in config_allowed:
                continue
            lines.add(f"{imp.module}:{imp.line} imports {hit} (components must not import {hit})")
    return sorted(lines)


def stale_allowances(found: list[Import], config_allowed: dict[str, str] = CONFIG_ALLOWED) -> list[str]:
    """Allow-listed modules that no longer import ``cosyml.config`` (or no longer exist)."""
    using = {imp.module for imp in found if _hits(imp.target, ("cosyml.config",))}
    return sorted(m for m in config_allowed if m not in using)


def cycles(found: list[Import], within: str) -> list[list[str]]:
    """Import cycles among the modules under ``within`` (type-only imports aside), each as a path a -> .. -> a."""
    modules = {imp.module for imp in found if _in(imp.module, within)}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in found:
        if imp.module in modules and not imp.type_only:
            target = imp.target
            while target and target not in modules:  # ``from a.b import c`` names a.b.c, a module or not
                target = target.rpartition(".")[0]
            if target and target != imp.module and not _in(imp.module, target):  # a package's own __init__
                edges[imp.module].add(target)
    found_cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                found_cycles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    return found_cycles


# ------------------------------------------------------------------------------------------------- the package


def test_no_forbidden_imports() -> None:
    print("cosyml.config still allowed in:", ", ".join(f"{m} ({why})" for m, why in CONFIG_ALLOWED.items()))
    bad = violations(package_imports())
    assert not bad, "forbidden imports (see README, Architecture):\n" + "\n".join(bad)


def test_config_allow_list_only_shrinks() -> None:
    stale = stale_allowances(package_imports())
    assert not stale, f"no longer import cosyml.config; remove from CONFIG_ALLOWED in {__file__}: {stale}"


def test_models_have_no_import_cycle() -> None:
    assert cycles(package_imports(), "cosyml.models") == []


# ------------------------------------------------------------------------------ the checker catches what it must


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("cosyml.models.x", "import cosyml.synth.engine\n", "models must not import cosyml.synth"),
        (
            "cosyml.models.x",
            "from cosyml.synth.sampling import SamplingParams\n",
            "models must not import cosyml.synth",
        ),
        ("cosyml.models.flow.x", "from ...synth import engine\n", "models must not import cosyml.synth"),
        ("cosyml.models.x", "from cosyml import registry\n", "models must not import cosyml.registry"),
        (
            "cosyml.models.x",
            "def f():\n    from cosyml.train.loop import train\n",
            "models must not import cosyml.train",
        ),
        (
            "cosyml.models.x",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cosyml.data\n",
            "models must not import cosyml.data",
        ),
        ("cosyml.synth.x", "import mlflow.pytorch as mp\n", "components must not import mlflow"),
        ("cosyml.text.x", "from argparse import Namespace\n", "components must not import argparse"),
        ("cosyml.train.x", "from ..tracking import Tracker\n", "components must not import cosyml.tracking"),
        ("cosyml.data.x", "from cosyml import cli\n", "components must not import cosyml.cli"),
        (
            "cosyml.evaluation.x",
            "from cosyml.commands.train import run\n",
            "components must not import cosyml.commands",
        ),
        ("cosyml.features.x", "from cosyml.config import Params\n", "components must not import cosyml.config"),
        ("cosyml.features.x", "from .. import config\n", "components must not import cosyml.config"),
    ],
)
def test_checker_finds_forbidden_import(module: str, source: str, rule: str) -> None:
    bad = violations(list(imports_of(source, module)), config_allowed={})
    assert len(bad) == 1 and rule in bad[0], bad


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("cosyml.models.x", "from cosyml.models.generation import SamplingParams\nimport torch\n"),
        ("cosyml.models.x", "from cosyml.features.mel import MelConfig\n"),  # models may use features
        ("cosyml.synth.x", "from cosyml.models.llm import Qwen2LM\nimport mlflowish\n"),  # a prefix, not mlflow
        ("cosyml.commands.x", "import argparse\nimport mlflow\nfrom cosyml.config import Params\n"),  # recipes may
        ("cosyml.tracking", "import mlflow\n"),
    ],
)
def test_checker_allows(module: str, source: str) -> None:
    assert violations(list(imports_of(source, module)), config_allowed={}) == []


def test_allow_list_covers_config_only_and_goes_stale() -> None:
    found = list(imports_of("from cosyml.config import Params\nimport mlflow\n", "cosyml.train.loop"))
    assert violations(found, {"cosyml.train.loop": "why"}) == [
        "cosyml.train.loop:2 imports mlflow (components must not import mlflow)"
    ]
    assert stale_allowances(found, {"cosyml.train.loop": "why", "cosyml.data.prepare": "why"}) == [
        "cosyml.data.prepare"
    ]


def test_cycle_finder() -> None:
    found = [
        *imports_of("from cosyml.models.b import B\n", "cosyml.models.a"),
        *imports_of("from cosyml.models.a import A\n", "cosyml.models.b"),
        *imports_of(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cosyml.models.a import A\n",
            "cosyml.models.c",
        ),
        *imports_of("from cosyml.models.c import C\n", "cosyml.models.a"),
    ]
    assert cycles(found, "cosyml.models") == [["cosyml.models.a", "cosyml.models.b", "cosyml.models.a"]]
