"""The embedded mode's bound on the images it holds in memory.

The gateway accepts up to BLIPQ_MAX_QUEUE_DEPTH images (100,000 by default) of up to 20 MiB each, and keeps
each one in the store until it is answered. Only the jobs admitted to the batcher are held in memory with
their bytes: while the admitted jobs hold `max_images` images or `max_bytes` bytes, a new job is deferred by
its id alone, and read back from the store when admitted jobs finish. So the memory held is at most the
bound plus one job (itself bounded by the HTTP body limit).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from blipq.contract.errors import BlipqError
from blipq.gateway.broker import Dispatch

log = logging.getLogger(__name__)

RETRY_S = 1.0  # the pause before a deferred job the store could not read is tried again


class Admission:
    def __init__(
        self,
        run: Callable[[Dispatch], None],
        load: Callable[[str], Dispatch | None],
        *,
        max_images: int,
        max_bytes: int,
    ) -> None:
        """`run` hands an admitted job to the model; `load` reads a deferred job back (None: it is finished or
        cancelled by now)."""
        self._run = run
        self._load = load
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._changed = threading.Condition()
        self._admitted: dict[str, tuple[int, int]] = {}  # job id -> (images, bytes)
        self._deferred: deque[str] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._admit_deferred, name="blipq-admission", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Defer nothing more to the model: jobs still deferred stay unfinished in the store."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def offer(self, dispatch: Dispatch) -> None:
        """Run the job now if there is room and none is waiting before it; else defer it (its bytes are not
        kept here: the store has them). Raises what `run` raises (ModelUnavailable: the job is not taken)."""
        with self._changed:
            if self._deferred or not self._has_room():
                self._deferred.append(dispatch.job_id)
                self._changed.notify_all()
                return
            self._count(dispatch)
        try:
            self._run(dispatch)
        except BaseException:
            self.finished(dispatch.job_id)
            raise

    def finished(self, job_id: str) -> None:
        """The job's images are all done: room for deferred ones."""
        with self._changed:
            self._admitted.pop(job_id, None)
            self._changed.notify_all()

    @property
    def deferred(self) -> int:
        with self._changed:
            return len(self._deferred)

    @property
    def held(self) -> tuple[int, int]:
        """Images and bytes of the jobs admitted and not finished."""
        with self._changed:
            return self._held()

    def _held(self) -> tuple[int, int]:
        return sum(images for images, _ in self._admitted.values()), sum(size for _, size in self._admitted.values())

    def _has_room(self) -> bool:
        images, size = self._held()
        return not self._admitted or (images < self.max_images and size < self.max_bytes)

    def _count(self, dispatch: Dispatch) -> None:
        size = sum(len(image.data) for image in dispatch.images if image.data is not None)
        self._admitted[dispatch.job_id] = (len(dispatch.images), size)

    def _admit_deferred(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and not (self._deferred and self._has_room()):
                    self._changed.wait()
                if self._stopping:
                    return
                job_id = self._deferred[0]
            try:
                dispatch = self._load(job_id)  # off the lock: a read from the store
            except Exception as exc:  # this thread must outlive a bad read, or no deferred job would ever run
                log.warning("deferred job %s not read back (%s); retrying", job_id, exc, exc_info=True)
                with self._changed:
                    self._changed.wait(RETRY_S)
                continue
            with self._changed:
                self._deferred.popleft()
                if dispatch is not None:
                    self._count(dispatch)
            if dispatch is not None:
                self._run_or_forget(dispatch)

    def _run_or_forget(self, dispatch: Dispatch) -> None:
        """A deferred job the model does not take (it is stopping, or its thread died) stays unfinished in the
        store, for the next start."""
        try:
            self._run(dispatch)
        except BlipqError as exc:
            log.info("job %s left for the next start: %s", dispatch.job_id, exc.message)
            self.finished(dispatch.job_id)
