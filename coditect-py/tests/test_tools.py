"""@coditect.tool: schemas from type hints, calls from an LlmAgent, bad arguments fed back."""

import enum
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

import pytest

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # pragma: no cover
    from typing_extensions import TypedDict

import coditect
from conftest import within


class Unit(enum.Enum):
    """Temperature unit."""

    C = "celsius"
    F = "fahrenheit"


@dataclass
class Place:
    """Where to look."""

    city: str
    country: Optional[str] = None
    tags: List[str] = field(default_factory=list)


class Window(TypedDict):
    days: int
    hourly: bool


@coditect.tool
def forecast(place: Place, unit: Unit, window: Window, mode: Literal["brief", "full"] = "brief") -> str:
    """Forecasts the weather.

    Args:
        place: The place to forecast for.
        unit: The unit of temperatures.
        window: How far ahead to look.
        mode: How much to say.
    """
    return f"{place.city}/{place.country}: 21 {unit.value} for {window['days']}d ({mode})"


def test_schema_comes_from_hints_and_docstring() -> None:
    s = forecast.schema
    assert forecast.name == "forecast" and forecast.description == "Forecasts the weather."
    assert s["required"] == ["place", "unit", "window"]
    place = s["properties"]["place"]
    assert place["type"] == "object" and place["required"] == ["city"]
    assert place["properties"]["country"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert place["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert place["description"] == "The place to forecast for."
    assert s["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert s["properties"]["window"]["properties"] == {"days": {"type": "integer"}, "hourly": {"type": "boolean"}}
    assert s["properties"]["mode"] == {"enum": ["brief", "full"], "type": "string", "description": "How much to say.", "default": "brief"}
    assert s["additionalProperties"] is False


def test_sphinx_docstrings_tuples_and_dicts() -> None:
    @coditect.tool(name="span")
    def span(points: Tuple[int, int], weights: Dict[str, float]) -> int:
        """Measures a span.

        :param points: Start and end.
        :param weights: Weight per name.
        """
        return points[1] - points[0]

    assert span.name == "span"
    p = span.schema["properties"]
    assert p["points"]["prefixItems"] == [{"type": "integer"}, {"type": "integer"}]
    assert p["points"]["description"] == "Start and end."
    assert p["weights"] == {"type": "object", "additionalProperties": {"type": "number"}, "description": "Weight per name."}
    assert span._invoke({"points": [2, 5], "weights": {}}) == 3


def test_arguments_are_checked_and_converted() -> None:
    out = forecast._invoke({"place": {"city": "Oslo"}, "unit": "celsius", "window": {"days": 2, "hourly": False}})
    assert out == "Oslo/None: 21 celsius for 2d (brief)"
    bad = [
        ({"unit": "celsius", "window": {"days": 1, "hourly": True}}, "missing required argument 'place'"),
        ({"place": {"city": 3}, "unit": "celsius", "window": {"days": 1, "hourly": True}}, "place.city: expected a string"),
        ({"place": {"city": "x"}, "unit": "kelvin", "window": {"days": 1, "hourly": True}}, "unit: expected one of"),
        ({"place": {"city": "x"}, "unit": "celsius", "window": {"days": 1}}, "missing field(s) hourly"),
        ({"place": {"city": "x", "zip": 1}, "unit": "celsius", "window": {"days": 1, "hourly": True}}, "unknown field(s) zip"),
        ({"place": {"city": "x"}, "unit": "celsius", "window": {"days": 1, "hourly": True}, "mode": "long"}, "mode: expected one of"),
        ({"place": {"city": "x"}, "unit": "celsius", "window": {"days": True, "hourly": True}}, "window.days: expected an integer"),
        ({"place": {"city": "x"}, "unit": "celsius", "window": {"days": 1, "hourly": True}, "extra": 1}, "unknown argument(s) extra"),
    ]
    for args, message in bad:
        with pytest.raises(coditect.ToolArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
            forecast._invoke(args)


def test_pydantic_models_when_installed() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Query(pydantic.BaseModel):
        """A search."""

        text: str
        limit: int = 10

    @coditect.tool
    def search(query: Query) -> List[str]:
        """Searches.

        Args:
            query: What to look for.
        """
        return [query.text] * query.limit

    p = search.schema["properties"]["query"]
    assert p["properties"]["text"]["type"] == "string" and p["required"] == ["text"]
    assert search._invoke({"query": {"text": "a", "limit": 2}}) == ["a", "a"]
    with pytest.raises(coditect.ToolArgumentError, match="limit"):
        search._invoke({"query": {"text": "a", "limit": "many"}})


def test_an_undescribable_type_is_refused_at_definition() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot describe"):

        @coditect.tool
        def f(x: Opaque) -> None:
            """Does nothing."""


async def test_llm_agent_calls_a_python_tool_and_gets_invalid_arguments_back(rt: coditect.Runtime) -> None:
    calls = []

    @coditect.tool
    async def lookup(city: str, days: int = 1) -> dict:
        """Looks a city up.

        Args:
            city: The city.
            days: How many days.
        """
        calls.append((city, days))
        return {"city": city, "temp": 21, "days": days}

    model = coditect.ScriptedModel(
        [
            coditect.ScriptedReply.tool_call("lookup", {"city": 42}),
            coditect.ScriptedReply.tool_call("lookup", {"city": "Oslo", "days": 2}),
            "Oslo is 21 degrees.",
        ]
    )
    agent = coditect.LlmAgent(model, system="You look things up.", tools=[lookup, forecast], capabilities=["weather"])
    assert agent.tool_names() == ["forecast", "lookup"] or sorted(agent.tool_names()) == ["forecast", "lookup"]
    rt.register("weather", agent)
    plan = coditect.Plan([coditect.Step("w", "weather", input=coditect.Goal())])
    outcome = await within(coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).run("weather in Oslo?"))
    assert outcome.output == "Oslo is 21 degrees."
    assert calls == [("Oslo", 2)]  # the invalid call never reached the function
    reqs = model.requests()
    first = reqs[1]["tool_results"][0]
    assert first["is_error"] and "city: expected a string" in first["content"]
    second = reqs[2]["tool_results"][0]
    assert not second["is_error"] and '"temp":21' in second["content"].replace(" ", "")
    assert sorted(reqs[0]["tools"]) == ["forecast", "lookup"]


async def test_a_tool_that_raises_is_a_tool_error_for_the_model(rt: coditect.Runtime) -> None:
    @coditect.tool
    def broken(x: int) -> int:
        """Always fails.

        Args:
            x: Anything.
        """
        raise RuntimeError("disk on fire")

    model = coditect.ScriptedModel([coditect.ScriptedReply.tool_call("broken", {"x": 1}), "gave up"])
    rt.register("b", coditect.LlmAgent(model, tools=[broken]))
    assert await within(rt.request("b", "try")) == "gave up"
    result = model.requests()[1]["tool_results"][0]
    assert result["is_error"] and "RuntimeError: disk on fire" in result["content"]
