"""Helpers the native module calls: plain values from Python objects, and
how a handler is called."""

from typing import Any


def to_plain(obj: Any) -> Any:
    """``obj`` as dicts, lists, str, int, float, bool and None.

    Dataclasses, pydantic models (v2), enums, tuples and sets are converted;
    anything else raises ``TypeError``.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"message keys must be str, not {type(k).__name__}")
            out[k] = to_plain(v)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and hasattr(type(obj), "model_fields"):
        return dump(mode="json")
    import dataclasses
    import enum

    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    raise TypeError(f"cannot send a {type(obj).__name__} as a message")


def handler_takes_context(target: Any, is_class: bool) -> bool:
    """Whether a handler (or a class's ``handle``) takes ``(task, ctx)``
    rather than ``(task)``."""
    import inspect

    fn = getattr(target, "handle", None) if is_class else target
    if not callable(fn):
        raise TypeError(
            "an agent is an async function or a class with an async handle(task, ctx) method"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if is_class:
        positional = positional[1:]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        return True
    return len(positional) >= 2


def schema_of(tp: Any) -> Any:
    """The JSON Schema an answer to ``Context.ask(..., schema=tp)`` must
    satisfy, for a type (a pydantic model, dataclass, ``TypedDict``, …)."""
    from . import _tool

    return _tool._schema(tp)


def answer_as(value: Any, tp: Any) -> Any:
    """An answer (already checked against ``schema_of(tp)``) as ``tp``."""
    from . import _tool

    return _tool._convert(value, tp, "answer")
