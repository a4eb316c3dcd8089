"""The twin and the compiled engine offer the same API: names, members, parameters."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import packetcore.engine._pure as twin
import pytest

pytestmark = pytest.mark.c_extension


#: How each class is built for a look at its instance's members (the twin sets some
#: attributes in ``__init__``, where the class alone does not show them).
INSTANCES: dict[str, tuple[Any, ...]] = {
    "Decoder": (),
    "GapTracker": (),
    "PacketStore": (),
    "TextParser": ("json",),
}


def parameters(function: Callable[..., object]) -> list[str]:
    """Return the parameter names of ``function``, ``self`` left out.

    A compiled class or method may have no ``__text_signature__``; Cython's
    ``embedsignature`` then puts ``name(params) -> result`` on the docstring's first line.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        line = (function.__doc__ or "").split("\n", 1)[0]
        if not (match := re.match(r"^[\w.]+\((.*)\)(?: -> .*)?$", line)):
            pytest.fail(f"no signature for {function!r}, nor a signature line: {line!r}")
        return [
            part.split(":")[0].split("=")[0].strip().lstrip("*")
            for part in _split_top_level(match.group(1))
            if part.strip() not in ("", "/", "*", "self")
        ]
    names = [name for name in signature.parameters if name != "self"]
    if names == ["args", "kwargs"]:  # a slot wrapper: the class's own line says more
        pytest.fail(f"{function!r} hides its parameters behind *args, **kwargs")
    return names


def _split_top_level(text: str) -> list[str]:
    # Commas inside brackets (``dict[str, int]``) do not separate parameters.
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        depth += char in "[("
        depth -= char in "])"
        if char == "," and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    """The compiled engine, imported only when a test asks (the twin's runs deselect them)."""
    return importlib.import_module("packetcore.engine._engine")


def public(obj: object) -> set[str]:
    """Return the public member names of ``obj``."""
    return {name for name in dir(obj) if not name.startswith("_")}


def test_the_same_names_are_exported(compiled: ModuleType) -> None:
    assert sorted(twin.__all__) == sorted(compiled.__all__)
    for name in compiled.__all__:
        assert hasattr(compiled, name) and hasattr(twin, name), name
        assert callable(getattr(twin, name)) == callable(getattr(compiled, name)), name


def test_the_constants_agree(compiled: ModuleType) -> None:
    for name in compiled.__all__:
        value = getattr(compiled, name)
        if not callable(value):
            assert getattr(twin, name) == value, name


def test_every_class_is_listed_here(compiled: ModuleType) -> None:
    classes = {name for name in compiled.__all__ if isinstance(getattr(compiled, name), type)}
    assert classes == set(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_classes_have_the_same_constructor(compiled: ModuleType, name: str) -> None:
    ours, theirs = getattr(twin, name), getattr(compiled, name)
    assert parameters(ours) == parameters(theirs)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_classes_have_the_same_public_members(compiled: ModuleType, name: str) -> None:
    args = INSTANCES[name]
    ours, theirs = getattr(twin, name)(*args), getattr(compiled, name)(*args)
    assert public(ours) == public(theirs)
    for special in ("__len__", "__contains__", "__iter__"):
        assert hasattr(ours, special) == hasattr(theirs, special), special


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_methods_have_the_same_parameters(compiled: ModuleType, name: str) -> None:
    ours, theirs = getattr(twin, name), getattr(compiled, name)
    for member in sorted(public(ours(*INSTANCES[name]))):
        mine, other = getattr(ours, member, None), getattr(theirs, member, None)
        # Properties and plain attributes are data, not methods: names are compared above.
        if callable(mine) or callable(other):
            assert callable(mine) and callable(other), f"{name}.{member}"
            assert parameters(mine) == parameters(other), f"{name}.{member}"


@pytest.mark.parametrize(
    "name", ["decode", "encode", "gather", "text_rows", "to_json", "valid_symbols"]
)
def test_functions_have_the_same_parameters(compiled: ModuleType, name: str) -> None:
    assert parameters(getattr(twin, name)) == parameters(getattr(compiled, name))


def test_functions_are_all_checked(compiled: ModuleType) -> None:
    functions = {
        name
        for name in compiled.__all__
        if callable(getattr(compiled, name)) and not isinstance(getattr(compiled, name), type)
    }
    assert functions == {"decode", "encode", "gather", "text_rows", "to_json", "valid_symbols"}
