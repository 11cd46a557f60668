"""Typed reading of the JSON files the tool writes and reads back: every key known, every value of its type.

    document = read_json_object(path, "fit it again")               # a JSON object, or one-sentence InputError
    values = typed_fields(Calibrator, data, str(path), "fit it again")  # keyword arguments of Calibrator
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noduleclip.errors import InputError


def read_json_object(path: str | os.PathLike, remedy: str) -> dict:
    """The JSON object in `path`; a file that is not valid JSON or not an object is refused in one sentence."""
    try:
        document = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); {remedy}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a JSON text file; {remedy}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path} holds a JSON {_json_kind(document)}, not an object of settings; {remedy}")
    return document


def typed_fields(cls: type, data: Any, where: str, remedy: str, prefix: str = "") -> dict:
    """Keyword arguments of dataclass `cls` from JSON `data`, refusing an unknown key or a value of the wrong type.

    Nested dataclasses are built from nested objects and lists become tuples where the field is a tuple."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where} has {_key(prefix.rstrip('.')) or 'its settings'} as a JSON {_json_kind(data)}, "
                         f"not an object; {remedy}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise InputError(f"{where} has unknown settings: the {_key(prefix + str(unknown[0]))} is not one of "
                         f"{', '.join(known)}; {remedy}")
    return {name: _converted(hints[name], value, where, prefix + name, remedy) for name, value in data.items()}


def _converted(hint: Any, value: Any, where: str, key: str, remedy: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return hint(**typed_fields(hint, value, where, remedy, prefix=key + "."))
    if _matches(hint, value):
        return tuple(value) if typing.get_origin(hint) is tuple else value
    raise InputError(f"{where} has {_key(key)} = {json.dumps(value)[:60]}, which is not {_describe(hint)}; {remedy}")


def _matches(hint: Any, value: Any) -> bool:
    """Whether JSON `value` fits the annotation `hint` (an int counts as a float; a bool is never a number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in args)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_matches(item, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(hint, type) and isinstance(value, hint)


def _describe(hint: Any) -> str:
    """`hint` in words: 'an integer', 'a number or null', 'a list of numbers'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (list, tuple):
        item = _describe(args[0]) if args else "value"
        return "a list of " + item.removeprefix("an ").removeprefix("a ") + "s"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a text"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "text", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _key(key: str) -> str:
    return f"key {key!r}" if key else ""
