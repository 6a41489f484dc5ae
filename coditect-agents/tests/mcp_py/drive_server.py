"""Drives a coditect MCP server with the official Python `mcp` SDK as the client.

    python drive_server.py stdio <server command> [args...]
    python drive_server.py http <url> <token>

Lists the tools, calls the `shout` capability, runs `run_task` with a progress
callback, starts the `wait` capability and cancels it after its first progress
report, and (over HTTP) checks that a wrong or missing token is refused.
Prints one JSON object with what it saw; exits 1 on an unexpected error.
"""

import json
import os
import sys

import anyio
import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def scenario(session, out):
    await session.initialize()
    tools = await session.list_tools()
    out["tools"] = [t.name for t in tools.tools]
    log("listed", out["tools"])
    out["schemas"] = {t.name: t.input_schema for t in tools.tools}

    shout = await session.call_tool("shout", {"input": "hello"})
    out["shout"] = text_of(shout)
    out["shout_error"] = bool(shout.is_error)
    log("shouted", out["shout"])

    progress = []

    async def on_progress(p, total, message):
        progress.append({"progress": p, "total": total, "message": message})

    run = await session.call_tool("run_task", {"goal": "make noise"}, progress_callback=on_progress)
    out["run_task"] = text_of(run)
    out["run_task_structured"] = run.structured_content
    out["progress"] = progress
    log("ran", out["run_task"], progress)

    # Cancel a long capability call once it reports progress.
    first = anyio.Event()

    async def on_wait_progress(p, total, message):
        first.set()

    async with anyio.create_task_group() as tg:
        async def long_call():
            await session.call_tool("wait", {"seconds": 120}, progress_callback=on_wait_progress)
            out["wait_finished"] = True

        tg.start_soon(long_call)
        with anyio.fail_after(30):
            await first.wait()
        tg.cancel_scope.cancel()
    out["cancelled"] = True

    # The run on the server was cancelled: its agent counted it. The server
    # answers once it has (or after 20 s with what it has).
    seen = await session.call_tool("cancelled_waits", {"at_least": 1})
    out["server_cancelled"] = int(text_of(seen))

    # The session still answers after the cancellation.
    again = await session.call_tool("shout", {"input": "again"})
    out["after_cancel"] = text_of(again)


async def refused(url, headers):
    """Whether a session with these headers is refused (and the raw status)."""
    async with httpx2.AsyncClient() as raw:
        r = await raw.post(
            url,
            headers={**headers, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
        )
        status = r.status_code
    try:
        with anyio.fail_after(20):
            async with create_mcp_http_client(headers=headers) as client:
                async with streamable_http_client(url, http_client=client) as (read, write, *_):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        await session.list_tools()
        return False, status
    except Exception:  # the SDK raises its own error types for a 401
        return True, status


async def main():
    out = {}
    mode = sys.argv[1]
    if mode == "stdio":
        # The SDK passes only a safe subset of the environment by default.
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=dict(os.environ))
        with anyio.fail_after(60):
            async with stdio_client(params) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await scenario(session, out)
    else:
        url, token = sys.argv[2], sys.argv[3]
        with anyio.fail_after(60):
            async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as client:
                async with streamable_http_client(url, http_client=client) as (read, write, *_):
                    async with ClientSession(read, write) as session:
                        await scenario(session, out)
        out["bad_token_refused"], out["bad_token_status"] = await refused(url, {"Authorization": "Bearer wrong"})
        out["no_token_refused"], out["no_token_status"] = await refused(url, {})
    print(json.dumps(out))


anyio.run(main)
