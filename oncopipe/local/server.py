"""Start and stop the embedded moto server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from oncopipe.errors import OncopipeError


class ServerError(OncopipeError):
    """The embedded endpoint did not start or stop."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    log_file: Path,
    port: int | None = None,
    timeout: float = 30.0,
    *,
    denials_file: Path | None = None,
) -> tuple[int, str]:
    """Start moto's server in its own session; return (pid, endpoint URL).

    With ``denials_file``, every request its IAM enforcement refuses is appended there
    (:mod:`oncopipe.local.moto_server`).

    Raises:
        ServerError: it did not answer within ``timeout`` seconds (its log is named).
    """
    port = port or free_port()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent.parent)}
    env.pop("ONCOPIPE_DENIALS_LOG", None)
    if denials_file is not None:
        denials_file.parent.mkdir(parents=True, exist_ok=True)
        env["ONCOPIPE_DENIALS_LOG"] = str(denials_file)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oncopipe.local.moto_server",
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `local up`, stopped by `local down`
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"moto server exited with {process.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310 - our http URL
                return process.pid, endpoint
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise ServerError(f"moto server did not answer on {endpoint} in {timeout:.0f}s; see {log_file}")


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(pid: int, timeout: float = 10.0) -> None:
    """Stop the server process (SIGTERM, then SIGKILL after ``timeout``)."""
    if not is_running(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:
            pass  # not our child (started by an earlier `local up`)
        if not is_running(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
