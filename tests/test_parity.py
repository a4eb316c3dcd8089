"""The twin, the compiled engine and the stub ``_engine.pyi`` offer one API.

Names, and for each: what kind of member it is (method, classmethod, staticmethod, a
read-only or a writable attribute) and each parameter's name, kind and default.  Each
engine is compared with the stub (the twin's runs check the twin alone), and the two
engines with each other; ``mypy.stubtest`` in ``make lint`` checks the stub's types.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable
from importlib import resources
from types import ModuleType
from typing import Any

import packetcore.engine._pure as twin
import pytest

#: How each class is built for a look at its instance's members (the twin sets some
#: attributes in ``__init__``, where the class alone does not show them); ``last`` is
#: given so that writing it back (to tell a writable attribute) keeps the rule.
INSTANCES: dict[str, tuple[Any, ...]] = {
    "Decoder": (),
    "GapTracker": (1, 10),
    "PacketStore": (1, 10),
    "TextParser": ("json",),
}

#: A parameter: its name, kind (``inspect.Parameter`` kind's name) and default (repr).
Param = tuple[str, str, str]

_NO_DEFAULT = "<none>"
_KINDS = {
    "posonlyargs": "POSITIONAL_ONLY",
    "args": "POSITIONAL_OR_KEYWORD",
    "kwonlyargs": "KEYWORD_ONLY",
}


def _ast_parameters(arguments: ast.arguments) -> list[Param]:
    """The parameters of a ``def`` parsed from source (the stub, or a signature line)."""
    positional = [*arguments.posonlyargs, *arguments.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    result: list[Param] = []
    for arg, default in zip(positional, defaults, strict=True):
        kind = _KINDS["posonlyargs" if arg in arguments.posonlyargs else "args"]
        result.append((arg.arg, kind, _literal(default)))
    if arguments.vararg:
        result.append((arguments.vararg.arg, "VAR_POSITIONAL", _NO_DEFAULT))
    for arg, kw_default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        result.append((arg.arg, _KINDS["kwonlyargs"], _literal(kw_default)))
    if arguments.kwarg:
        result.append((arguments.kwarg.arg, "VAR_KEYWORD", _NO_DEFAULT))
    return [p for p in result if p[0] not in ("self", "cls")]


def _literal(node: ast.expr | None) -> str:
    if node is None:
        return _NO_DEFAULT
    value = ast.literal_eval(node)  # a stub's default is the value, never ``...``
    assert value is not Ellipsis, "a default in the stub is written as its value"
    return repr(value)


def parameters(function: Callable[..., object]) -> list[Param]:
    """Return the parameters of ``function`` (``self`` left out): name, kind, default.

    A compiled class may have no ``__text_signature__``; Cython's ``embedsignature``
    then puts ``name(params) -> result`` on the docstring's first line, parsed here.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        line = (function.__doc__ or "").split("\n", 1)[0]
        if not (match := re.match(r"^[\w.]+\((.*)\)(?: -> .*)?$", line)):
            pytest.fail(f"no signature for {function!r}, nor a signature line: {line!r}")
        parsed = ast.parse(f"def f({match.group(1)}): pass").body[0]
        assert isinstance(parsed, ast.FunctionDef)
        return _ast_parameters(parsed.args)
    result = [
        (
            p.name,
            p.kind.name,
            _NO_DEFAULT if p.default is inspect.Parameter.empty else repr(p.default),
        )
        for p in signature.parameters.values()
        if p.name not in ("self", "cls")
    ]
    if [p[0] for p in result] == ["args", "kwargs"]:  # a slot wrapper hides the parameters
        pytest.fail(f"{function!r} hides its parameters behind *args, **kwargs")
    return result


#: What an API offers: each public name's kind and parameters (``None`` for data).
Api = dict[str, tuple[str, list[Param] | None]]


def stub() -> tuple[list[str], Api, dict[str, Api]]:
    """The stub's ``__all__``, its module-level names and each class's members."""
    source = (resources.files("packetcore.engine") / "_engine.pyi").read_text()
    tree = ast.parse(source)
    exported: list[str] = []
    names: Api = {}
    classes: dict[str, Api] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            exported = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = ("constant", None)
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = ("function", _ast_parameters(node.args))
        elif isinstance(node, ast.ClassDef):
            names[node.name] = ("class", None)
            classes[node.name] = _stub_members(node)
    return exported, names, classes


def _stub_members(node: ast.ClassDef) -> Api:
    members: Api = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members[item.target.id] = ("writable", None)
        elif isinstance(item, ast.FunctionDef):
            decorators = [ast.unparse(d) for d in item.decorator_list]
            if "property" in decorators:
                members[item.name] = ("read-only", None)
            elif f"{item.name}.setter" in decorators:
                members[item.name] = ("writable", None)
            elif "classmethod" in decorators or "staticmethod" in decorators:
                members[item.name] = (decorators[-1], _ast_parameters(item.args))
            else:
                members[item.name] = ("method", _ast_parameters(item.args))
    return {
        name: kind
        for name, kind in members.items()
        if not name.startswith("_") or name == "__init__"
    }


def runtime(module: ModuleType) -> tuple[list[str], Api, dict[str, Api]]:
    """The same description of an engine, read from the module itself."""
    names: Api = {}
    classes: dict[str, Api] = {}
    for name in module.__all__:
        value = getattr(module, name)
        if isinstance(value, type):
            names[name] = ("class", None)
            classes[name] = _runtime_members(value)
        elif callable(value):
            names[name] = ("function", parameters(value))
        else:
            names[name] = ("constant", None)
    return list(module.__all__), names, classes


def _runtime_members(cls: type) -> Api:
    instance = cls(*INSTANCES[cls.__name__])
    members: Api = {"__init__": ("method", parameters(cls))}
    for name in {n for n in dir(instance) if not n.startswith("_")}:
        static = inspect.getattr_static(cls, name, None)
        value = getattr(instance, name)
        if isinstance(static, (classmethod, staticmethod)):
            members[name] = (type(static).__name__, parameters(value))
        elif type(static).__name__ == "classmethod_descriptor":
            members[name] = ("classmethod", parameters(value))
        elif callable(value) and static is not None and not inspect.isdatadescriptor(static):
            members[name] = ("method", parameters(value))
        else:
            try:
                setattr(instance, name, value)  # the value it has: any rule is kept
            except AttributeError:
                members[name] = ("read-only", None)
            else:
                members[name] = ("writable", None)
    return members


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    """The compiled engine, imported only when a test asks (the twin's runs deselect them)."""
    return importlib.import_module("packetcore.engine._engine")


def test_the_stub_exports_what_the_engine_exports(engine: ModuleType) -> None:
    exported, names, _ = stub()
    assert sorted(exported) == sorted(engine.__all__)
    assert sorted(names) == sorted(exported)


def test_module_names_have_the_stubs_kinds_and_parameters(engine: ModuleType) -> None:
    _, ours, _ = runtime(engine)
    _, theirs, _ = stub()
    for name in sorted(theirs):
        assert ours[name] == theirs[name], name


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_class_members_have_the_stubs_kinds_and_parameters(engine: ModuleType, name: str) -> None:
    _, _, ours = runtime(engine)
    _, _, theirs = stub()
    assert sorted(ours[name]) == sorted(theirs[name])
    for member in sorted(theirs[name]):
        assert ours[name][member] == theirs[name][member], f"{name}.{member}"


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_classes_have_the_same_special_methods(engine: ModuleType, name: str) -> None:
    tree = ast.parse((resources.files("packetcore.engine") / "_engine.pyi").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    declared = {
        item.name
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name in ("__len__", "__contains__")
    }
    cls = getattr(engine, name)
    for special in ("__len__", "__contains__", "__iter__"):
        assert hasattr(cls, special) == (special in declared), f"{name}.{special}"


def test_every_class_is_listed_here(engine: ModuleType) -> None:
    classes = {name for name in engine.__all__ if isinstance(getattr(engine, name), type)}
    assert classes == set(INSTANCES)


@pytest.mark.c_extension
def test_the_engines_agree_with_each_other(compiled: ModuleType) -> None:
    # Implied by each one agreeing with the stub; said directly, a failure names both.
    assert runtime(twin) == runtime(compiled)


@pytest.mark.c_extension
def test_the_constants_agree(compiled: ModuleType) -> None:
    for name in compiled.__all__:
        value = getattr(compiled, name)
        if not callable(value):
            assert getattr(twin, name) == value, name
