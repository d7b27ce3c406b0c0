"""The seam between the gateway and whatever runs the model: publish jobs, receive their outcomes.

Two transports implement `Broker`: the in-process one of the embedded mode (`blipq serve` with no
broker) and RabbitMQ. Outcomes come back through the `OutcomeHandler` the gateway passes to
`start`; they feed the store and wake the requests waiting for them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions


@dataclass(frozen=True)
class Dispatch:
    """One job to caption; `job_id` comes back on its outcome (the AMQP correlation id). `indices`: the job's
    index of each image, when only some of its images are dispatched (default: all, in order)."""

    job_id: str
    images: Sequence[ImageInput]
    options: CaptionOptions
    indices: Sequence[int] | None = None


@dataclass(frozen=True)
class JobStarted:
    job_id: str


@dataclass(frozen=True)
class JobFinished:
    """Images done (one result each, in order), or `error` when they could not be run at all. `indices`: the
    job's images this outcome is for (one part of a split job); None: every image dispatched."""

    job_id: str
    results: Sequence[ImageResult] = ()
    error: ErrorInfo | None = None
    indices: Sequence[int] | None = None


Outcome = JobStarted | JobFinished

#: Awaited on the event loop, possibly more than once per job (at-least-once delivery); done once the outcome is
#: stored (a transport acknowledges its message then, not before), StoreUnavailable when it could not be.
OutcomeHandler = Callable[[Outcome], Coroutine[Any, Any, None]]


class Broker(Protocol):
    #: True when the transport keeps nothing across a restart of the gateway's process, so the gateway
    #: dispatches its unfinished jobs again when it starts (the embedded mode).
    replays_unfinished: bool

    async def start(self, on_outcome: OutcomeHandler, *, shared_store: str | None = None) -> None:
        """Connect and start delivering outcomes. `shared_store`: the id of a store this gateway shares with
        others (`Store.shared_id`): the outcomes of their jobs may come here too, and this one's to them."""
        ...

    async def publish(self, dispatch: Dispatch) -> None:
        """Hand a job over; returns once the transport holds it. Raises QueueFull or QueueUnavailable."""
        ...

    async def readiness(self) -> dict[str, object]:
        """Details for /readyz when jobs can run now; raises QueueUnavailable or ModelUnavailable otherwise."""
        ...

    async def stop(self) -> None:
        """Finish the jobs started and disconnect; jobs never started stay unfinished in the store."""
        ...
