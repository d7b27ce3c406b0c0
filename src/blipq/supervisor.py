"""`blipq serve`'s worker processes: started as `blipq worker` subprocesses and restarted if they die."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
SUPERVISOR_ENV = "BLIPQ_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1
#: A worker that ran this long before dying is considered healthy again: the backoff resets.
STABLE_AFTER_S = 60.0


class SupervisedProcess:
    """Keeps one command running until `stop`, restarting it with capped exponential backoff."""

    def __init__(self, name: str, command: Sequence[str]) -> None:
        self.name = name
        self.command = list(command)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=f"supervise-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the process (it finishes its batch), SIGKILL after `grace_s`."""
        self._stop.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, grace_s)
                process.kill()
                process.wait()
        self._thread.join(5)

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=env)
            log.info("%s started (pid %d)", self.name, self.process.pid)
            code = self.process.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = 1.0
            log.error("%s exited with code %d; restarting in %.0f s", self.name, code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def worker_command(arguments: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "blipq", "worker", *arguments]


def exit_with_supervisor() -> None:
    """In a supervised worker: get SIGTERM (and drain) when `serve` dies, even by SIGKILL, instead of
    living on as an orphan. Linux only; elsewhere `serve` stopping normally still stops its workers."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # the supervisor died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
