"""Start the server as a real process on 127.0.0.1, wait until it is ready, stop it gracefully, check it is gone.

    with start_server("tiny-test", max_concurrent=2) as server:      # a free port, a fresh random API key
        client = OpenAI(base_url=server.openai_base_url, api_key=server.api_key)
        ...
    assert_stopped(server)                                           # its processes gone, its port not its own

`stop()` sends SIGTERM: uvicorn stops accepting connections, lets in-flight requests finish (up to the server's
shutdown timeout), then exits; SIGKILL only if it is still there after that. `assert_stopped` checks that server's
own process tree is gone (by pid and start time, so a recycled pid is not mistaken for it) and that its port is
either closed (a connection attempt is refused, as lesson 1.4 checks its servers) or held by another live process,
e.g. a new server restarted on the same port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any

import psutil

from .settings import API_KEYS_ENV


def port_is_free(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True when nothing accepts connections on host:port (the attempt is refused)."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may take it before you bind it: prefer --port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_exists(pid: int) -> bool:
    """True while a process with this id exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class ServerProcess:
    """A running server: its address, key and process; `stop()` shuts it down gracefully."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, api_key: str | None, workdir: Path,
                 stop_timeout_s: float):
        self.process, self.host, self.port, self.api_key = process, host, port, api_key
        self.workdir, self.stop_timeout_s = workdir, stop_timeout_s
        self._log_text: str | None = None
        self.tree: dict[int, float] = {}  # pid -> start time of the server and its descendants, as last seen
        self.remember_tree()
        # if the caller forgets stop(), kill it when this object goes away or the interpreter exits
        self._finalizer = weakref.finalize(self, _kill, process)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        """http://host:port."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What the openai client's base_url wants: http://host:port/v1."""
        return f"{self.base_url}/v1"

    @property
    def returncode(self) -> int | None:
        """None while running; 0 after a graceful stop."""
        return self.process.poll()

    def is_running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def log(self) -> str:
        """What the server printed (uvicorn's log, errors with tracebacks)."""
        if self._log_text is not None:
            return self._log_text
        log_path = self.workdir / "server.log"
        return log_path.read_text(errors="replace") if log_path.exists() else ""

    def remember_tree(self) -> None:
        """Note the server's process and its descendants (pid and start time), for `assert_stopped`."""
        try:
            root = psutil.Process(self.process.pid)
            for process in [root, *root.children(recursive=True)]:
                self.tree.setdefault(process.pid, process.create_time())
        except psutil.Error:  # already gone (or gone meanwhile): what was noted before stays
            pass

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown begins) without waiting."""
        if self.is_running():
            self.remember_tree()
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM, wait for the graceful shutdown, SIGKILL if it overruns; return the exit code (0: graceful)."""
        self.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            _kill(self.process)
        if self._log_text is None:
            self._log_text = self.log()
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._finalizer.detach()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(model: str = "tiny-test", *, api_keys: list[str] | tuple[str, ...] | None = None,
                 host: str = "127.0.0.1", port: int = 0, token_delay_ms: float = 0.0, torch_threads: int = 0,
                 device: str = "auto", dtype: str = "auto", ready_timeout_s: float = 120.0, log_level: str = "info",
                 env: dict[str, str] | None = None, engine: bool = False, **settings: Any) -> ServerProcess:
    """Start `python -m llm_roadmap.serving` and return once /health/ready answers 200.

    `device`, `dtype`: where the model runs ("auto": the GPU if there is one, in its dtype; "cpu", "float32", ...).
    `api_keys`: None makes one random key (`server.api_key`); an empty list turns authentication off. `settings`:
    any ServerSettings field, e.g. max_concurrent=1, request_timeout_s=5 (passed as --max-concurrent 1 ...).
    `torch_threads=1` keeps a tiny model fast on a CPU that other work shares (two threads contend there).
    `engine=True` serves through lesson 4.4's engine (`EngineBackend`: continuous batching across requests).
    """
    keys = [secrets.token_urlsafe(24)] if api_keys is None else list(api_keys)
    workdir = Path(tempfile.mkdtemp(prefix="llm-server-"))
    port_file = workdir / "port"
    command = [sys.executable, "-m", "llm_roadmap.serving", "--model", str(model), "--host", host, "--port",
               str(port), "--port-file", str(port_file), "--parent-pid", str(os.getpid()), "--log-level", log_level,
               "--device", device, "--dtype", dtype]
    if token_delay_ms:
        command += ["--token-delay-ms", str(token_delay_ms)]
    if torch_threads:
        command += ["--torch-threads", str(torch_threads)]
    if engine:
        command += ["--engine"]
    for name, value in settings.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    child_env = {**os.environ, **(env or {}), API_KEYS_ENV: ",".join(keys)}  # keys never appear in the command
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    with open(workdir / "server.log", "wb") as log:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                   stdin=subprocess.DEVNULL)
    shutdown_timeout = float(settings.get("shutdown_timeout_s", 30.0))
    server = ServerProcess(process, host, 0, keys[0] if keys else None, workdir, stop_timeout_s=shutdown_timeout + 10)
    deadline = time.monotonic() + ready_timeout_s
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode} before it was ready; its "
                                   f"log:\n{server.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready after {ready_timeout_s} s; its log:\n"
                                   f"{server.log()[-4000:]}")
            if server.port == 0 and port_file.exists():
                server.port = int(port_file.read_text())
            if server.port and _ready(server.base_url):
                server.remember_tree()
                return server
            time.sleep(0.1)
    except BaseException:
        server.stop(timeout_s=5)
        raise


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int, started: float) -> bool:
    """True while the process that had this pid and start time runs (a recycled pid has another start time)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def listeners(port: int) -> set[int | None]:
    """Pids listening on this TCP port (None for a listener whose process this user cannot see)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # (macOS without root)
        return {None} if not port_is_free(port) else set()
    return {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


def assert_stopped(server: ServerProcess) -> None:
    """Raise AssertionError unless this server's processes are gone and its port is closed or held by another live
    process (a server restarted on the same port passes; the stopped one still listening does not)."""
    assert not server.is_running(), f"server process {server.pid} is still running"
    left = [pid for pid, started in server.tree.items() if _alive(pid, started)]
    assert not left, f"the server's processes {left} still exist"
    if port_is_free(server.port, server.host):
        return
    holders = listeners(server.port)
    assert holders - {None}, (f"port {server.port} accepts connections but no visible process listens on it (is "
                              "the server's process tree hidden from this user?)")
    # (the server's own tree is gone, checked above: a live holder is another process, e.g. its successor)
    alive = [pid for pid in holders - {None} if psutil.pid_exists(pid)]
    assert alive, f"port {server.port} is held by {sorted(holders - {None})}, none of them a live process"
