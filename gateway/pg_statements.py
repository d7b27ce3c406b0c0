"""The PostgreSQL store's longer statements, apart from the code that runs them (`blipq.gateway.pg_store`)."""

from __future__ import annotations

from typing import LiteralString

# Outcomes, confirms and reads in as few statements as they can: a statement's round trip and the driver's
# work for it cost more than what the database does for these rows. (A job's creation stays three plain
# inserts: one statement of data-modifying CTEs made the server's work per job larger than the round trips
# it saved; docs/benchmarks/store_throughput.md.)

#: The job's pending images and whether any image has a caption. Read in a statement of its own once the job's
#: row is locked (`FOR UPDATE`): a statement that waited for the lock still reads what its snapshot, taken
#: before the wait, held, which misses the outcomes committed by the transaction it waited for.
IMAGES_FOR_OUTCOMES: LiteralString = """
SELECT ARRAY(SELECT idx FROM job_images WHERE job_id = %s AND state IN ('queued', 'running') ORDER BY idx),
    EXISTS (SELECT 1 FROM job_images WHERE job_id = %s AND state = 'done')"""

SET_OUTCOMES: LiteralString = """
UPDATE job_images SET state = outcome.state, caption = outcome.caption, error_code = outcome.code,
    error_message = outcome.message
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::integer[])
    AS outcome(state, caption, code, message, idx)
WHERE job_images.job_id = %s AND job_images.idx = outcome.idx"""

#: Every image has its outcome: the bytes go, the job is finished, and the gateways are told (at commit).
FINISH: LiteralString = """
WITH blobs AS (DELETE FROM job_blobs WHERE job_id = %s),
job AS (
    UPDATE jobs SET status = %s, started_at = COALESCE(started_at, %s), finished_at = %s WHERE id = %s
)
SELECT pg_notify(%s, %s)"""
