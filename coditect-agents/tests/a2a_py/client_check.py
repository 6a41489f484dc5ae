"""Drives a coditect A2A server with the official Python a2a-sdk client.

    python client_check.py FAST_URL SLOW_URL TOKEN

FAST_URL publishes a kind that upper-cases text (skill `shout`); SLOW_URL one
that works until cancelled (skill `sleep`). Checks the card, a plain send, a
streamed send, tasks/get, a cancel, and that a bad token is refused; prints
one `ok <check>` line per check and exits non-zero at the first failure.
"""

import asyncio
import sys

import httpx

from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskState,
)


def ok(what: str) -> None:
    print(f"ok {what}", flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAILED {what}", flush=True)
        sys.exit(1)
    ok(what)


def user(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


async def client_for(url: str, token: str, streaming: bool, polling: bool = False):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    card = await A2ACardResolver(http, url).get_agent_card()
    config = ClientConfig(streaming=streaming, polling=polling, httpx_client=http)
    return card, ClientFactory(config).create(card)


async def main() -> None:
    fast, slow, token = sys.argv[1], sys.argv[2], sys.argv[3]

    card, client = await client_for(fast, token, streaming=False)
    check(card.name == "upper", f"card name {card.name!r}")
    check([s.id for s in card.skills] == ["shout"], "card skills")
    check(card.capabilities.streaming, "card declares streaming")
    check("bearer" in card.security_schemes, "card declares the bearer scheme")

    events = [e async for e in client.send_message(user("hello"))]
    task = events[-1].task
    check(task.status.state == TaskState.TASK_STATE_COMPLETED, "send completes")
    check(task.artifacts[0].parts[0].text == "HELLO", f"send answers {task.artifacts[0].parts[0].text!r}")

    got = await client.get_task(GetTaskRequest(id=task.id))
    check(got.status.state == TaskState.TASK_STATE_COMPLETED, "tasks/get status")
    check(got.history[0].parts[0].text == "hello", "tasks/get history holds the user message")
    check(got.status.message.parts[0].text == "HELLO", "tasks/get status message is the answer")

    _, streamer = await client_for(fast, token, streaming=True)
    events = [e async for e in streamer.send_message(user("stream me"))]
    kinds = [e.WhichOneof("payload") for e in events]
    check("status_update" in kinds, f"stream has status updates {kinds}")
    check("artifact_update" in kinds, "stream has the artifact")
    final = events[-1].status_update.status
    check(final.state == TaskState.TASK_STATE_COMPLETED, "stream ends completed")
    check(final.message.parts[0].text == "STREAM ME", "stream's final message is the answer")

    _, poller = await client_for(slow, token, streaming=False, polling=True)
    request = user("wait")
    request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
    first = [e async for e in poller.send_message(request)][0].task
    check(first.status.state != TaskState.TASK_STATE_COMPLETED, f"slow task is running ({first.status.state})")
    cancelled = await poller.cancel_task(CancelTaskRequest(id=first.id))
    check(cancelled.status.state == TaskState.TASK_STATE_CANCELED, "tasks/cancel cancels")
    again = await poller.get_task(GetTaskRequest(id=first.id))
    check(again.status.state == TaskState.TASK_STATE_CANCELED, "cancelled task stays cancelled")

    _, intruder = await client_for(fast, "not-the-token", streaming=False)
    try:
        [e async for e in intruder.send_message(user("let me in"))]
    except Exception as e:  # the SDK raises its client error for HTTP 401
        check("401" in str(e) or "nauthori" in str(e), f"bad token refused: {type(e).__name__}: {e}")
    else:
        check(False, "bad token refused")
    print("all ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
