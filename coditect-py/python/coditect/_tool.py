"""``@coditect.tool``: a typed, documented Python function as a model's tool.

The tool's JSON Schema comes from the function's type hints (str, int, float,
bool, None, lists, tuples, dicts, ``Optional``/``Union``, ``Literal``,
``Enum``, dataclasses, ``TypedDict``, ``Annotated[T, "description"]``, and
pydantic v2 models when pydantic is installed); parameter descriptions come
from the docstring (Google ``Args:`` or Sphinx ``:param x:`` style). The
model's arguments are checked and converted against the same hints before the
function runs; arguments that do not fit raise :class:`ToolArgumentError`,
which the agent hands back to the model as a tool error.
"""

import dataclasses
import enum
import inspect
import re
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, overload

from ._errors import ToolArgumentError

__all__ = ["Tool", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_EMPTY = inspect.Parameter.empty
_MAX_DEPTH = 16

if sys.version_info >= (3, 10):
    from types import UnionType as _UnionType

    _UNION_TYPES: Tuple[Any, ...] = (Union, _UnionType)
else:  # pragma: no cover - 3.9
    _UNION_TYPES = (Union,)


def _pydantic_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__annotations__") and hasattr(tp, "__total__")


def _parse_doc(doc: str) -> Tuple[str, Dict[str, str]]:
    """The summary of a docstring and its parameter descriptions."""
    params: Dict[str, str] = {}
    lines = doc.splitlines()
    summary_lines: List[str] = []
    i = 0
    while i < len(lines) and lines[i].strip() and not re.match(r"^\s*(Args|Arguments|Parameters|Returns|Raises):\s*$", lines[i]):
        if lines[i].strip().startswith(":param"):
            break
        summary_lines.append(lines[i].strip())
        i += 1
    current: Optional[str] = None
    in_args = False
    for line in lines:
        m = re.match(r"^\s*:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$", line)
        if m:
            params[m.group(1)] = m.group(2).strip()
            current = m.group(1)
            continue
        if re.match(r"^\s*(Args|Arguments|Parameters):\s*$", line):
            in_args, current = True, None
            continue
        if re.match(r"^\s*(Returns|Raises|Yields|Examples?):\s*$", line):
            in_args, current = False, None
            continue
        if in_args:
            m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
            elif not line.strip():
                current = None
    return " ".join(summary_lines), params


def _schema(tp: Any, depth: int = 0) -> Dict[str, Any]:
    """The JSON Schema of a type hint."""
    if depth > _MAX_DEPTH:
        return {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if origin is typing.Annotated:
        inner = _schema(args[0], depth + 1)
        for meta in args[1:]:
            if isinstance(meta, str):
                inner = dict(inner, description=meta)
        return inner
    if origin in _UNION_TYPES:
        return {"anyOf": [_schema(a, depth + 1) for a in args]}
    if origin is typing.Literal:
        schema: Dict[str, Any] = {"enum": list(args)}
        kinds = {type(a) for a in args}
        if len(kinds) == 1:
            t = _schema(kinds.pop(), depth + 1).get("type")
            if t:
                schema["type"] = t
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        schema = {"enum": values}
        if tp.__doc__ and tp.__doc__ != enum.Enum.__doc__:
            schema["description"] = inspect.cleandoc(tp.__doc__)
        return schema
    if origin in (list, List, typing.Sequence, set, frozenset) or tp in (list, set, frozenset):
        schema = {"type": "array"}
        if args:
            schema["items"] = _schema(args[0], depth + 1)
        return schema
    if origin is tuple or tp is tuple:
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "prefixItems": [_schema(a, depth + 1) for a in args], "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema(args[0], depth + 1) if args else {}}
    if origin in (dict, Dict, typing.Mapping) or tp is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _schema(args[1], depth + 1)
        return schema
    if _pydantic_model(tp):
        return _inline_defs(tp.model_json_schema())
    if _is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        required = sorted(getattr(tp, "__required_keys__", hints.keys()))
        return _object(tp, {k: _schema(v, depth + 1) for k, v in hints.items()}, required)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp, include_extras=True)
        props: Dict[str, Any] = {}
        required: List[str] = []
        for f in dataclasses.fields(tp):
            s = _schema(hints.get(f.name, Any), depth + 1)
            if "description" in f.metadata:
                s = dict(s, description=f.metadata["description"])
            props[f.name] = s
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        return _object(tp, props, required)
    raise TypeError(f"coditect.tool cannot describe the type {tp!r} as JSON Schema")


def _object(tp: type, props: Dict[str, Any], required: List[str]) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    doc = tp.__doc__
    if doc and not doc.startswith(tp.__name__ + "("):
        schema["description"] = inspect.cleandoc(doc)
    return schema


def _inline_defs(schema: Dict[str, Any]) -> Dict[str, Any]:
    """A pydantic schema with its ``$defs`` references replaced by the definitions."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            return {}
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
                return walk(defs[ref[8:]], depth + 1)
            return {k: walk(v, depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    return walk(schema)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _convert(value: Any, tp: Any, path: str, depth: int = 0) -> Any:
    """``value`` (as JSON decoded it) checked against and converted to ``tp``."""
    if depth > _MAX_DEPTH:
        raise ToolArgumentError(f"argument {path} is nested too deeply")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad(expected: str) -> ToolArgumentError:
        return ToolArgumentError(f"argument {path}: expected {expected}, got {_kind(value)} {value!r}"[:500])

    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if tp is type(None) or tp is None:
        if value is not None:
            raise bad("null")
        return None
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if origin is typing.Annotated:
        return _convert(value, args[0], path, depth + 1)
    if origin in _UNION_TYPES:
        errors = []
        for a in args:
            try:
                return _convert(value, a, path, depth + 1)
            except ToolArgumentError as e:
                errors.append(str(e))
        raise ToolArgumentError("; or ".join(errors)[:800])
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise bad("one of " + ", ".join(repr(m.value) for m in tp)) from None
    if origin in (list, List, typing.Sequence) or tp is list:
        if not isinstance(value, list):
            raise bad("an array")
        return [_convert(v, args[0] if args else Any, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if origin in (set, frozenset) or tp in (set, frozenset):
        if not isinstance(value, list):
            raise bad("an array")
        items = [_convert(v, args[0] if args else Any, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return (origin or tp)(items)
    if origin is tuple or tp is tuple:
        if not isinstance(value, list):
            raise bad("an array")
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad(f"an array of {len(args)} items")
            return tuple(_convert(v, a, f"{path}[{i}]", depth + 1) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_convert(v, args[0] if args else Any, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
    if origin in (dict, Dict, typing.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise bad("an object")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if _pydantic_model(tp):
        try:
            return tp.model_validate(value)
        except Exception as e:  # pydantic.ValidationError, without importing pydantic
            raise ToolArgumentError(f"argument {path}: {e}"[:800]) from None
    if _is_typeddict(tp) or (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        if not isinstance(value, dict):
            raise bad("an object")
        hints = typing.get_type_hints(tp, include_extras=True)
        if _is_typeddict(tp):
            required = set(getattr(tp, "__required_keys__", hints.keys()))
        else:
            required = {
                f.name
                for f in dataclasses.fields(tp)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
            hints = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise ToolArgumentError(f"argument {path}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(required - set(value))
        if missing:
            raise ToolArgumentError(f"argument {path}: missing field(s) {', '.join(missing)}")
        fields = {k: _convert(v, hints[k], f"{path}.{k}", depth + 1) for k, v in value.items()}
        return fields if _is_typeddict(tp) else tp(**fields)
    return value


class Tool:
    """A Python function a model can call; made by :func:`tool`.

    Calling the tool calls the function. ``name``, ``description`` and
    ``schema`` are what the model sees.
    """

    name: str
    description: str
    schema: Dict[str, Any]

    def __init__(self, fn: Callable[..., Any], name: Optional[str] = None, description: Optional[str] = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        summary, docs = _parse_doc(inspect.getdoc(fn) or "")
        self.description = description or summary or self.name
        hints = typing.get_type_hints(fn, include_extras=True)
        self._params: List[Tuple[str, Any, Any]] = []
        props: Dict[str, Any] = {}
        required: List[str] = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args and **kwargs cannot be described to a model")
            ann = hints.get(p.name, Any)
            s = _schema(ann)
            if p.name in docs:
                s = dict(s, description=docs[p.name])
            if p.default is not _EMPTY and p.default is not None:
                try:
                    from . import _values

                    s = dict(s, default=_values.to_plain(p.default))
                except TypeError:
                    pass
            props[p.name] = s
            if p.default is _EMPTY:
                required.append(p.name)
            self._params.append((p.name, ann, p.default))
        self.schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)

    def _invoke(self, args: Any) -> Any:
        """Checks the model's arguments and calls the function (the result may
        be a coroutine)."""
        if not isinstance(args, dict):
            raise ToolArgumentError(f"tool {self.name} takes an object of arguments, got {_kind(args)}")
        known = {n for n, _, _ in self._params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ToolArgumentError(f"tool {self.name}: unknown argument(s) {', '.join(unknown)}")
        kwargs: Dict[str, Any] = {}
        for name, ann, default in self._params:
            if name in args:
                kwargs[name] = _convert(args[name], ann, name)
            elif default is _EMPTY:
                raise ToolArgumentError(f"tool {self.name}: missing required argument {name!r}")
        return self.fn(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


@overload
def tool(fn: Callable[..., Any]) -> Tool: ...


@overload
def tool(*, name: Optional[str] = None, description: Optional[str] = None) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, description: Optional[str] = None) -> Any:
    """Makes a typed, docstringed function (sync or ``async``) a tool.

    Example::

        @coditect.tool
        def word_count(text: str) -> int:
            \"\"\"Counts the words of a text.

            Args:
                text: The text to count.
            \"\"\"
            return len(text.split())
    """
    if fn is not None:
        return Tool(fn, name, description)
    return lambda f: Tool(f, name, description)
