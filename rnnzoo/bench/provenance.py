"""Which code a run's result depends on: a hash of the source of every rnnzoo module it uses.

A cached result is reused only while that code is unchanged. The modules are found by reading imports, not
by running them: from a run's roots (the layer's module, the model shell, the task's module and the training
loop), every ``import`` and ``from ... import`` of an rnnzoo module, followed transitively. A name imported
from a package that re-exports it (``from ..models import SequenceModel``) counts as the module that defines
it, so editing one layer leaves the results of the others valid.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
from pathlib import Path

__all__ = ["code_hash", "modules_used"]

PACKAGE = "rnnzoo"
TRAINING_LOOP = ("rnnzoo.bench.capability", "rnnzoo.models.sequence_model")


ROOT = Path(__file__).resolve().parents[1]  # the rnnzoo package directory


@functools.cache
def _path(module: str) -> Path | None:
    """The source file of an rnnzoo module (``a/b.py`` or ``a/b/__init__.py``), or None if it is not one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if len(parts) > 1 and path.is_file() or len(parts) == 1 and path.name == "__init__.py":
            return path
    return None


def _defining_module(package: str, name: str) -> tuple[str, bool]:
    """The module that ``from package import name`` reads ``name`` from, and whether its own imports count:
    a submodule, or the module that defines the object; a constant of the package itself
    (``from .. import __version__``) counts the package's source alone, not everything it imports."""
    if _path(f"{package}.{name}") is not None:
        return f"{package}.{name}", True
    obj = getattr(importlib.import_module(package), name, None)
    defined_in = getattr(obj, "__module__", None)
    if isinstance(defined_in, str) and _path(defined_in) is not None:
        return defined_in, True
    return package, False


def _type_checking_only(node: ast.AST) -> bool:
    """An ``if TYPE_CHECKING:`` block: imports for annotations, never run."""
    test = getattr(node, "test", None)
    name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
    return isinstance(node, ast.If) and name == "TYPE_CHECKING"


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those inside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _type_checking_only(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


@functools.cache
def _imports(module: str) -> frozenset[tuple[str, bool]]:
    """The rnnzoo modules that ``module``'s source imports directly, each with whether to follow its imports."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name, True) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            if _path(source) is not None:
                found.update(_defining_module(source, alias.name) for alias in node.names)
    return frozenset((m, follow) for m, follow in found if _path(m) is not None)


def modules_used(roots: tuple[str, ...]) -> list[str]:
    """Every rnnzoo module reachable by imports from ``roots``, sorted."""
    seen, followed = set(), set()
    todo = [(m, True) for m in roots if _path(m) is not None]
    while todo:
        module, follow = todo.pop()
        seen.add(module)
        if follow and module not in followed:
            followed.add(module)
            todo.extend(_imports(module))
    return sorted(seen)


def code_hash(*roots: str) -> str:
    """A short hash of the source of :func:`modules_used` from ``roots`` and the training loop."""
    digest = hashlib.sha256()
    for module in modules_used((*roots, *TRAINING_LOOP)):
        digest.update(module.encode())
        digest.update(_path(module).read_bytes())
    return digest.hexdigest()[:16]
