"""A tolerant reader for the HyperPyYAML files in official model directories.

``cosyvoice2.yaml`` / ``cosyvoice3.yaml`` name upstream classes with tags (``!new:``, ``!name:``,
``!apply:``) and cross-reference values with ``!ref <key>`` (sometimes with arithmetic, e.g.
``!ref <chunk_size> * <token_mel_ratio>`` = 50). We instantiate nothing: every tagged node becomes a
:class:`Tagged` value holding the tag, the dotted target name and its arguments, and every ``!ref`` is
resolved to the referenced value. Our own builders then read hyperparameters from that data.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cosyml.errors import ModelDirError


@dataclass(frozen=True)
class Tagged:
    """A HyperPyYAML tagged node.

    ``kind`` is ``"new"`` (an object to construct), ``"name"`` (a callable with bound keyword args) or
    ``"apply"`` (a call made at load time). ``target`` is the dotted name, e.g.
    ``"cosyvoice.flow.flow.CausalMaskedDiffWithXvec"``. ``args`` is the node's mapping (keyword
    arguments), list (positional arguments) or scalar, with nested tags and refs resolved.
    """

    kind: str
    target: str
    args: Any

    @property
    def class_name(self) -> str:
        """The last component of ``target`` (``"CausalMaskedDiffWithXvec"``)."""
        return self.target.rsplit(".", 1)[-1]

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments (empty when the node holds a list or scalar)."""
        return dict(self.args) if isinstance(self.args, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs().get(key, default)


@dataclass(frozen=True)
class _Ref:
    expression: str


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps HyperPyYAML tags as data."""


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return None if value == "" else value


def _make_tag_constructor(kind: str):
    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
        return Tagged(kind=kind, target=suffix, args=_construct_node(loader, node))

    return construct


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> _Ref:
    return _Ref(str(loader.construct_scalar(node)))


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", _make_tag_constructor(_kind))
_Loader.add_constructor("!ref", _construct_ref)
_Loader.add_constructor("!copy", _construct_ref)

# HyperPyYAML writes floats like 1e-06 that plain YAML 1.1 reads as strings; accept them as floats.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
    list("-+0123456789."),
)

_REF_KEY = re.compile(r"<([^<>]+)>")
_ARITH = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _eval_arithmetic(text: str) -> Any:
    def walk(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return walk(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _ARITH:
            return _ARITH[type(n.op)](walk(n.left), walk(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -walk(n.operand)
        raise ValueError(text)

    return walk(ast.parse(text, mode="eval"))


def _lookup(root: dict[str, Any], key: str, path: Path) -> Any:
    node: Any = root
    for part in re.split(r"[.\[\]]+", key.strip()):
        if not part:
            continue
        if isinstance(node, Tagged):
            node = node.kwargs()
        if not isinstance(node, dict) or part not in node:
            raise ModelDirError(f"{path}: '!ref <{key}>' names a key the file does not define")
        node = node[part]
    return node


def _resolve(value: Any, root: dict[str, Any], path: Path, depth: int = 0) -> Any:
    if depth > 50:
        raise ModelDirError(f"{path}: '!ref' values refer to each other in a loop")
    if isinstance(value, _Ref):
        keys = _REF_KEY.findall(value.expression)
        if len(keys) == 1 and value.expression.strip() == f"<{keys[0]}>":
            return _resolve(_lookup(root, keys[0], path), root, path, depth + 1)
        substituted = value.expression
        for key in keys:
            resolved = _resolve(_lookup(root, key, path), root, path, depth + 1)
            substituted = substituted.replace(f"<{key}>", repr(resolved))
        try:
            return _eval_arithmetic(substituted)
        except (ValueError, SyntaxError, ZeroDivisionError):
            return substituted
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, _resolve(value.args, root, path, depth + 1))
    if isinstance(value, dict):
        return {k: _resolve(v, root, path, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, path, depth + 1) for v in value]
    return value


def read_model_yaml(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a model-directory yaml into plain data with :class:`Tagged` nodes and refs resolved.

    ``overrides`` replace top-level keys before refs are resolved (like HyperPyYAML's overrides,
    e.g. ``{"qwen_pretrain_path": "<dir>/CosyVoice-BlankEN"}``). Keys starting with ``__`` (the seed
    ``!apply`` lines) are dropped: loading a model directory has no side effects.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(
            f"{path}: model yaml not found; the model directory needs cosyvoice2.yaml or cosyvoice3.yaml"
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ModelDirError(f"{path}: cannot parse YAML{where}; restore the file from the official model") from None
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path}: expected a mapping of hyperparameters at the top level")
    raw = {k: v for k, v in raw.items() if not str(k).startswith("__")}
    raw.update(overrides or {})
    return {k: _resolve(v, raw, path) for k, v in raw.items()}


def require_tagged(config: dict[str, Any], key: str, path: str | Path) -> Tagged:
    """``config[key]`` as a :class:`Tagged` node, or a one-line :class:`ModelDirError`."""
    node = config.get(key)
    if not isinstance(node, Tagged):
        raise ModelDirError(f"{path}: missing '{key}' section (a '!new:' or '!name:' node); restore the official yaml")
    return node
