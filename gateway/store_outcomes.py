"""Recording outcomes: per image, the first one wins, and a job is finished once every image has one (one reply
for the whole job, or one per part of a split job). `plan_outcomes` decides what an outcome changes; each
backend reads what it needs and writes the plan in its own transaction (`record_outcomes` is SQLite's)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import LiteralString

from blipq.contract.messages import ImageResult
from blipq.gateway.jobs import JobStatus

UNFINISHED = ("queued", "running")

#: Images of unfinished jobs, in both backends' dialect. The states are written out, not bound: only then does
#: SQLite count from the small partial index job_images_pending instead of reading every row.
PENDING_COUNT: LiteralString = "SELECT COUNT(*) FROM job_images WHERE state IN ('queued', 'running')"

#: An image's outcome as stored: state, caption, error code, error message.
OutcomeRow = tuple[object, ...]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What an outcome changed: `new` when it gave images their first outcome, `finished` when the job is
    finished now (by this outcome or an earlier one)."""

    new: bool
    finished: bool


def outcome_rows(results: Sequence[ImageResult]) -> list[OutcomeRow]:
    """Each result as stored: state, caption, error code, error message."""
    return [
        (
            "done" if result.caption is not None else "failed",
            result.caption,
            result.error.code if result.error else None,
            result.error.message if result.error else None,
        )
        for result in results
    ]


@dataclass(frozen=True)
class OutcomePlan:
    """The images to update, as (state, caption, code, message, index), and whether that finishes the job."""

    updates: list[tuple[object, ...]]
    finishes: bool


def plan_outcomes(
    job_id: str,
    job: tuple[str, int] | None,
    pending: Sequence[int],
    rows: Sequence[OutcomeRow] | None,
    indices: Sequence[int] | None,
    every_one: OutcomeRow = (),
) -> OutcomePlan | Recorded:
    """For the job's (status, image count), or None when it is unknown, and the indices of its pending images:
    the plan for outcomes `rows`, or `every_one` for each image, for the images at `indices` that are pending,
    else for the pending images in order; or what was recorded when nothing is to change."""
    if job is None:
        return Recorded(new=False, finished=False)
    status, n_images = job
    if JobStatus(status).finished:
        return Recorded(new=False, finished=True)
    targets = pending if indices is None else indices
    if rows is None:
        rows = [every_one] * len(targets)
    elif indices is None and len(rows) == n_images != len(pending):  # a whole job's reply: the pending ones
        rows = [rows[index] for index in pending]
    if len(rows) != len(targets):
        log.warning("job %s: %d results for %d images; ignored", job_id, len(rows), len(targets))
        return Recorded(new=False, finished=False)
    waiting = set(pending)
    updates = [(*outcome, index) for outcome, index in zip(rows, targets, strict=True) if index in waiting]
    if not updates:
        return Recorded(new=False, finished=False)
    return OutcomePlan(updates, finishes=len(updates) == len(pending))


def record_outcomes(
    db: sqlite3.Connection,
    job_id: str,
    rows: Sequence[OutcomeRow] | None,
    indices: Sequence[int] | None,
    every_one: OutcomeRow = (),
) -> Recorded:
    """`plan_outcomes` on SQLite, in the caller's transaction (the writer thread's: no other write interleaves)."""
    job = db.execute("SELECT status, n_images FROM jobs WHERE id = ?", (job_id,)).fetchone()
    pending = [
        index
        for (index,) in db.execute(
            "SELECT idx FROM job_images WHERE job_id = ? AND state IN (?, ?) ORDER BY idx", (job_id, *UNFINISHED)
        )
    ]
    plan = plan_outcomes(job_id, job, pending, rows, indices, every_one)
    if isinstance(plan, Recorded):
        return plan
    db.executemany(
        "UPDATE job_images SET state = ?, caption = ?, error_code = ?, error_message = ? WHERE idx = ? AND job_id = ?",
        [(*update, job_id) for update in plan.updates],
    )
    now = time.time()
    if not plan.finishes:  # a part of the job is done: the rest is under way
        db.execute(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) WHERE id = ?", (now, job_id)
        )
        return Recorded(new=True, finished=False)
    db.execute("DELETE FROM job_blobs WHERE job_id = ?", (job_id,))  # every image has its outcome now
    (done,) = db.execute("SELECT COUNT(*) FROM job_images WHERE job_id = ? AND state = 'done'", (job_id,)).fetchone()
    db.execute(
        "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = ? WHERE id = ?",
        ((JobStatus.SUCCEEDED if done else JobStatus.FAILED).value, now, now, job_id),
    )
    return Recorded(new=True, finished=True)
