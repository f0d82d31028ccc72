"""What a plug-in file declares, read from its syntax without running it (and the same read from a live object).

A registry (:mod:`infoview.utils.registry`) lists its entries from the files of
a package without importing them, so that ``infoview --help`` and
``infoview list ...`` never import torch. It reads each file's syntax tree:

- a *decorated* plug-in is a class or function under ``@<decorator>("name", key=value, ...)``:
  its declaration is the decorator's arguments, the docstring, the class's
  attributes (``DEFAULTS = {...}``) and the parameters of the function (or of
  the class's ``__init__``);
- a *module* plug-in (a command, a view recipe) is the module itself: its
  docstring and its module-level names.

Values are read where they are written with literals, ``Key(...)`` and the
file's own constants (``choices=MOCO_BN`` with ``MOCO_BN = ("auto", ...)``);
anything else (a lambda, a name imported from elsewhere) reads as
:data:`NOT_STATIC`, and an entry that needs it says so. :func:`live_decl`
makes the same :class:`Decl` from the imported object, and the registry checks
that both give the same metadata, so what is listed is what runs.
"""
from __future__ import annotations

import ast
import inspect
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class _NotStatic:
    def __repr__(self) -> str:
        return "NOT_STATIC"


#: a value that cannot be read without running the file
NOT_STATIC: Any = _NotStatic()
#: a parameter without a default
EMPTY: Any = inspect.Parameter.empty


@dataclass(frozen=True)
class Call:
    """A call to a function the reader does not run (``Command(help=...)``): its static arguments."""

    func: str
    args: tuple
    kwargs: dict


@dataclass
class Decl:
    """One plug-in's declaration: read from its file (static) or from the imported object (live)."""

    name: str  # the decorator's first argument, or the module's plug-in name
    target: str  # "module:attr", or "module" for a module plug-in
    doc: str = ""  # cleaned docstring
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # the decorator's keyword arguments
    attrs: Mapping[str, Any] = field(default_factory=dict)  # the class's or module's names
    params: tuple = ()  # ((name, "positional" | "keyword", default or EMPTY), ...)
    where: str = ""  # file:line, for errors

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


class _Unreadable(Exception):
    pass


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}


def _calls() -> dict[str, Any]:
    from infoview.schema import Key  # light; here so that the base layer does not import it at import time

    return {"Key": Key, "tuple": tuple, "list": list, "dict": dict, "float": float, "int": int, "frozenset": frozenset}


def static_value(node: ast.AST | None, env: Mapping[str, Any]) -> Any:
    """The value of ``node`` if it is written with literals, known calls and names of ``env``; else NOT_STATIC."""
    if node is None:
        return NOT_STATIC
    try:
        return _value(node, env, _calls())
    except _Unreadable:
        return NOT_STATIC


def _value(node: ast.AST, env: Mapping[str, Any], calls: dict) -> Any:
    def v(n):
        return _value(n, env, calls)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [v(e) for e in node.elts if not isinstance(e, ast.Starred)]
        if len(items) != len(node.elts):
            raise _Unreadable
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        out: dict = {}
        for k, val in zip(node.keys, node.values):
            if k is None:  # {**name}
                merged = v(val)
                if not isinstance(merged, Mapping):
                    raise _Unreadable
                out.update(merged)
            else:
                out[v(k)] = v(val)
        return out
    if isinstance(node, ast.JoinedStr):  # an f-string of constants
        return "".join(v(part) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        value = v(node.value)
        value = {-1: value, ord("s"): str(value), ord("r"): repr(value), ord("a"): ascii(value)}[node.conversion]
        return format(value, v(node.format_spec) if node.format_spec is not None else "")
    if isinstance(node, ast.Name):
        value = env.get(node.id, NOT_STATIC)
        if value is NOT_STATIC:
            raise _Unreadable
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = v(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](v(node.left), v(node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = tuple(v(a) for a in node.args)
        kwargs = {k.arg: v(k.value) for k in node.keywords if k.arg is not None}
        if len(kwargs) != len(node.keywords):
            raise _Unreadable
        if node.func.id in calls:
            return calls[node.func.id](*args, **kwargs)
        return Call(node.func.id, args, kwargs)
    raise _Unreadable


def _lenient_call(node: ast.Call, env: Mapping[str, Any]) -> tuple[tuple, dict]:
    """A call's arguments, each read on its own (NOT_STATIC where it cannot be)."""
    args = tuple(static_value(a, env) for a in node.args)
    return args, {k.arg: static_value(k.value, env) for k in node.keywords if k.arg is not None}


def _assignments(body: list[ast.stmt], env: Mapping[str, Any]) -> dict[str, Any]:
    """``NAME = value`` statements of a module or class body, read in order (later ones may use earlier ones)."""
    found: dict[str, Any] = {}
    for stmt in body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
            stmt, ast.AnnAssign) and stmt.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                node = stmt.value
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in _calls():
                    args, kwargs = _lenient_call(node, {**env, **found})
                    found[target.id] = Call(node.func.id, args, kwargs)
                else:
                    found[target.id] = static_value(node, {**env, **found})
    return found


def _params(fn: ast.FunctionDef | None, env: Mapping[str, Any], skip_first: bool) -> tuple:
    if fn is None:
        return ()
    a = fn.args
    positional = [*a.posonlyargs, *a.args][1 if skip_first else 0:]
    defaults = [EMPTY] * (len(positional) - len(a.defaults)) + [static_value(d, env) for d in a.defaults]
    out = [(p.arg, "positional", d) for p, d in zip(positional, defaults)]
    out += [(p.arg, "keyword", EMPTY if d is None else static_value(d, env)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.vararg or a.kwarg:
        out.append(("*", "variadic", EMPTY))
    return tuple(out)


def read_file(path: Path, module: str, decorator: str | None, name: str = "") -> list[Decl]:
    """The plug-ins of one file: those under ``@decorator(...)``, or the module itself (``decorator`` None)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    env = _assignments(tree.body, {})
    if decorator is None:
        return [Decl(name, module, ast.get_docstring(tree) or "", {}, env, (), f"{path}:1")]
    found = []
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == decorator:
                args, kwargs = _lenient_call(deco, env)
                if not args or not isinstance(args[0], str):
                    raise ValueError(f"{path}:{deco.lineno}: @{decorator} takes the name as a string first")
                if isinstance(node, ast.ClassDef):
                    init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
                    attrs, params = _assignments(node.body, env), _params(init, env, skip_first=True)
                    params = params if init is not None else None  # inherited: the base class's
                else:
                    attrs, params = {}, _params(node, env, skip_first=False)
                found.append(Decl(args[0], f"{module}:{node.name}", ast.get_docstring(node) or "", kwargs, attrs,
                                  params, f"{path}:{node.lineno}"))
    return found


class _Attributes(Mapping):
    """A live object's attributes as a mapping (inherited ones included)."""

    def __init__(self, obj: Any):
        self._obj = obj

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self._obj, name)
        except AttributeError:
            raise KeyError(name) from None

    def __iter__(self):
        return iter(dir(self._obj))

    def __len__(self) -> int:
        return len(dir(self._obj))


def live_params(fn: Any, skip_first: bool) -> tuple:
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.KEYWORD_ONLY: "keyword"}
    params = list(inspect.signature(fn).parameters.values())[1 if skip_first else 0:]
    out = [(p.name, kinds[p.kind], p.default) for p in params if p.kind in kinds]
    if any(p.kind not in kinds for p in params):
        out.append(("*", "variadic", EMPTY))
    return tuple(out)


def live_decl(name: str, obj: Any, kwargs: Mapping[str, Any] | None = None) -> Decl:
    """The declaration of an imported plug-in: a class, a function or a module."""
    if inspect.ismodule(obj):
        return Decl(name, obj.__name__, inspect.getdoc(obj) or "", {}, _Attributes(obj), ())
    target = f"{obj.__module__}:{obj.__qualname__}"
    params = live_params(obj.__init__, True) if isinstance(obj, type) else live_params(obj, False)
    doc = (inspect.cleandoc(obj.__doc__) if obj.__doc__ else "")
    return Decl(name, target, doc, dict(kwargs or {}), _Attributes(obj), params)
