"""Wake-ups for threads waiting on a queue: "a job finished", "work was enqueued".

`Bell` wakes waiters in this process. `Doorbell` also rings across processes on one machine
over Unix datagram sockets (for SQLite): each process that waits binds one socket in a
directory derived from the queue's file, and a ringing process sends a byte to every socket
there. A lost wake-up only delays a waiter until its next periodic re-check, never loses a
result: the queue's storage is the truth, the bell is only a hint to look again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import threading
import uuid
from pathlib import Path


class Bell:
    """A counter that changes on every ring, with waiters that sleep until it changes."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def ring(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def generation(self) -> int:
        """The current count; pass it to `wait_for_ring`."""
        with self._condition:
            return self._generation

    def wait_for_ring(self, seen: int, timeout_s: float) -> None:
        """Sleep until a ring newer than `seen` or the timeout."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout=timeout_s)


class Doorbell(Bell):
    def __init__(self, key: str) -> None:
        super().__init__()
        digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]
        # Short and fixed-length: Unix socket paths are limited to ~100 bytes.
        self.directory = Path(tempfile.gettempdir()) / f"blipq-{digest}"
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._listen_lock = threading.Lock()

    def ring(self) -> None:
        """Wake every waiter in every process listening on this queue."""
        super().ring()
        try:
            listeners = list(self.directory.glob("*.sock"))
        except OSError:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for path in listeners:
                if path == self._path:
                    continue
                try:
                    sender.sendto(b"!", str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        path.unlink()  # a process that died without cleaning up
                except OSError:
                    pass  # full buffer: that listener is already awake

    def generation(self) -> int:
        self._listen()
        return super().generation()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()

    def _listen(self) -> None:
        with self._listen_lock:
            if self._socket is not None:
                return
            self.directory.mkdir(mode=0o700, exist_ok=True)
            path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(str(path))
            self._socket, self._path = listener, path
            threading.Thread(target=self._receive, args=(listener,), name="blipq-doorbell", daemon=True).start()

    def _receive(self, listener: socket.socket) -> None:
        while True:
            try:
                listener.recv(64)
            except OSError:
                return  # closed
            Bell.ring(self)
