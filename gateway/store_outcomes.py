"""Recording outcomes in the store: per image, the first one wins, and a job is finished once every image has
one (one reply for the whole job, or one per part of a split job)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from blipq.gateway.jobs import JobStatus

UNFINISHED = ("queued", "running")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What an outcome changed: `new` when it gave images their first outcome, `finished` when the job is
    finished now (by this outcome or an earlier one)."""

    new: bool
    finished: bool


def record_outcomes(
    db: sqlite3.Connection,
    job_id: str,
    rows: Sequence[tuple[object, ...]] | None,
    indices: Sequence[int] | None,
    every_one: tuple[object, ...] = (),
) -> Recorded:
    """Outcomes `rows` (state, caption, code, message), or `every_one` for each image, for the images at
    `indices` that are pending, else for the pending images in order (in the caller's transaction). The first
    outcome of each image wins; the job is finished once every image has one."""
    row = db.execute("SELECT status, n_images FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return Recorded(new=False, finished=False)
    if JobStatus(row[0]).finished:
        return Recorded(new=False, finished=True)
    pending = [
        index
        for (index,) in db.execute(
            "SELECT idx FROM job_images WHERE job_id = ? AND state IN (?, ?) ORDER BY idx",
            (job_id, *UNFINISHED),
        )
    ]
    targets = pending if indices is None else indices
    if rows is None:
        rows = [every_one] * len(targets)
    elif indices is None and len(rows) == row[1] != len(pending):  # a whole job's reply: the pending ones
        rows = [rows[index] for index in pending]
    if len(rows) != len(targets):
        log.warning("job %s: %d results for %d images; ignored", job_id, len(rows), len(targets))
        return Recorded(new=False, finished=False)
    waiting = set(pending)
    updates = [(*outcome, job_id, index) for outcome, index in zip(rows, targets, strict=True) if index in waiting]
    if not updates:
        return Recorded(new=False, finished=False)
    db.executemany(
        "UPDATE job_images SET state = ?, caption = ?, error_code = ?, error_message = ? WHERE job_id = ? AND idx = ?",
        updates,
    )
    now = time.time()
    if len(updates) < len(pending):  # a part of the job is done: the rest is under way
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
