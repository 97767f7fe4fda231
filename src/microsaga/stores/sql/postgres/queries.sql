-- Named queries of the PostgreSQL store. Each starts with "-- name: NAME"; parameters
-- are positional ($1, $2, ...) as asyncpg wants them, listed in a comment when many.

-- schema ---------------------------------------------------------------------------

-- name: migration_lock
-- Serialises workers that start at the same time on an old or empty database.
SELECT pg_advisory_xact_lock(8307431127460185601);

-- name: has_version_table
SELECT to_regclass('microsaga_schema_version') IS NOT NULL;

-- name: version_table
CREATE TABLE IF NOT EXISTS microsaga_schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version
SELECT coalesce(max(version), 0) FROM microsaga_schema_version;

-- name: stamp_version
INSERT INTO microsaga_schema_version (version) VALUES ($1);

-- workflows ------------------------------------------------------------------------

-- name: lock_workflow
-- Two processes saving the same workflow at once must not both take version N + 1.
SELECT pg_advisory_xact_lock(hashtextextended('microsaga.workflow:' || $1, 0));

-- name: save_workflow_latest
SELECT version, hash FROM microsaga_workflows WHERE id = $1 ORDER BY version DESC LIMIT 1;

-- name: insert_workflow
INSERT INTO microsaga_workflows (id, version, hash, body, created_at)
VALUES ($1, $2, $3, $4, $5);

-- name: load_workflow_latest
SELECT id, version, hash, body, created_at FROM microsaga_workflows
WHERE id = $1 ORDER BY version DESC LIMIT 1;

-- name: load_workflow_version
SELECT id, version, hash, body, created_at FROM microsaga_workflows
WHERE id = $1 AND version = $2;

-- name: list_workflows
SELECT DISTINCT ON (id) id, version, hash, body, created_at FROM microsaga_workflows
ORDER BY id, version DESC;

-- name: remove_workflow
DELETE FROM microsaga_workflows WHERE id = $1;

-- group commit ---------------------------------------------------------------------
-- A batch is at most three statements, each one round trip and its own implicit
-- transaction: create_executions, then read_executions and write_transitions. Every
-- unit is written by one statement, so it is all there or not at all.

-- name: create_executions
-- New executions with their first step runs, and the definitions they need.
-- Definitions: $1 hash, $2 workflow_id, $3 body, $4 step_ids (a JSON list).
-- Executions: $5 id, $6 workflow_id, $7 version, $8 definition, $9 status,
-- $10 request_body, $11 request_header, $12 start_step, $13 reverse, $14 step_timeout,
-- $15 deadline_at, $16 owner, $17 lease_token, $18 lease_until, $19 created_at,
-- $20 parent_id, $21 redrive_of.
-- Step runs of their starts: $22 .. $33 as in write_transitions. $34 the channel
-- notified when an execution nobody owns is created (a worker should claim it).
-- Identity values follow the array order, so seq (newest first listings) follows the
-- order the units were submitted in.
WITH defs AS (
    INSERT INTO microsaga_definitions (hash, workflow_id, body, step_ids)
    SELECT d.hash, d.workflow_id, d.body, ARRAY(SELECT json_array_elements_text(d.step_ids))
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::json[])
        AS d (hash, workflow_id, body, step_ids)
    ON CONFLICT (hash) DO NOTHING
),
created AS (
    INSERT INTO microsaga_executions (
        id, workflow_id, version, definition, status, request_body, request_header,
        start_step, reverse, step_timeout, deadline_at, owner, lease_token, lease_until,
        created_at, parent_id, redrive_of, updated_at
    )
    SELECT u.id, u.workflow_id, u.version, u.definition, u.status, u.request_body,
           u.request_header, u.start_step, u.reverse, u.step_timeout, u.deadline_at,
           u.owner, u.lease_token, u.lease_until, u.created_at, u.parent_id,
           u.redrive_of, u.created_at
    FROM unnest(
        $5::text[], $6::text[], $7::integer[], $8::text[], $9::smallint[], $10::bytea[],
        $11::json[], $12::text[], $13::boolean[], $14::double precision[],
        $15::double precision[], $16::text[], $17::bigint[], $18::double precision[],
        $19::double precision[], $20::text[], $21::text[]
    ) WITH ORDINALITY AS u (
        id, workflow_id, version, definition, status, request_body, request_header,
        start_step, reverse, step_timeout, deadline_at, owner, lease_token, lease_until,
        created_at, parent_id, redrive_of, ord
    )
    ORDER BY u.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING id, owner
),
starts AS (
    INSERT INTO microsaga_step_runs (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    SELECT s.* FROM unnest(
        $22::text[], $23::text[], $24::smallint[], $25::smallint[], $26::integer[],
        $27::bytea[], $28::json[], $29::bytea[], $30::json[], $31::text[],
        $32::double precision[], $33::double precision[]
    ) AS s (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    WHERE s.execution_id IN (SELECT id FROM created)
)
-- several notifications of one transaction with the same payload arrive as one
SELECT c.id, CASE WHEN c.owner IS NULL THEN pg_notify($34, 'new') END FROM created c
UNION ALL
-- an owned unit committed before whose reply was lost (the server went away), and
-- retried: its own row (same owner and creation time, never claimed since) counts as
-- created, or the worker would never run it. Each id is looked up on its own (see
-- read_executions).
SELECT e.id, NULL
FROM unnest($5::text[], $16::text[], $19::double precision[]) AS u (id, owner, created_at)
CROSS JOIN LATERAL (
    SELECT id, owner, created_at, lease_token FROM microsaga_executions WHERE id = u.id
    OFFSET 0
) e
WHERE e.owner = u.owner AND e.created_at = u.created_at AND e.lease_token = 1;

-- name: create_execution_one
-- create_executions for one execution with at most one step run started: values, not
-- arrays (as write_expected_one). $1 .. $4 its definition, $5 .. $21 the execution,
-- $22 .. $33 the step run (all NULL when there is none), $34 the channel; the columns
-- and the answer are create_executions'.
WITH defs AS (
    INSERT INTO microsaga_definitions (hash, workflow_id, body, step_ids)
    VALUES ($1::text, $2::text, $3::bytea, ARRAY(SELECT json_array_elements_text($4::json)))
    ON CONFLICT (hash) DO NOTHING
),
created AS (
    INSERT INTO microsaga_executions (
        id, workflow_id, version, definition, status, request_body, request_header,
        start_step, reverse, step_timeout, deadline_at, owner, lease_token, lease_until,
        created_at, parent_id, redrive_of, updated_at
    )
    VALUES (
        $5::text, $6::text, $7::integer, $8::text, $9::smallint, $10::bytea, $11::json,
        $12::text, $13::boolean, $14::double precision, $15::double precision, $16::text,
        $17::bigint, $18::double precision, $19::double precision, $20::text, $21::text,
        $19::double precision
    )
    ON CONFLICT (id) DO NOTHING
    RETURNING id, owner
),
starts AS (
    INSERT INTO microsaga_step_runs (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    SELECT s.* FROM (VALUES (
        $22::text, $23::text, $24::smallint, $25::smallint, $26::integer, $27::bytea,
        $28::json, $29::bytea, $30::json, $31::text, $32::double precision,
        $33::double precision
    )) AS s (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    WHERE s.execution_id IN (SELECT id FROM created)
)
SELECT c.id, CASE WHEN c.owner IS NULL THEN pg_notify($34, 'new') END FROM created c
UNION ALL
-- a retried creation whose first reply was lost, as in create_executions. The owner is
-- compared with IS NOT DISTINCT FROM, which no index serves, so that the plan looks the
-- row up by id: the generic plan made on a fresh (empty) table otherwise scans every
-- row the worker owns (by_owner)
SELECT e.id, NULL
FROM microsaga_executions e
WHERE e.id = $5::text AND $16::text IS NOT NULL AND e.owner IS NOT DISTINCT FROM $16::text
  AND e.created_at = $19::double precision AND e.lease_token = 1;

-- name: read_executions
-- What a batch of transitions is decided on. No lock: write_transitions writes a row
-- only if these columns are unchanged (compare and set). $1 distinct ids.
-- Each id is looked up on its own, through the unique index on id: OFFSET 0 keeps the
-- subquery whole, so the only choice left is how to find one row by its id. Written
-- as a join or id = ANY($1), the generic plan is chosen by the size of the table when
-- a connection first runs it: made on a fresh table (which the planner takes for ten
-- pages) it is a scan of every row, kept until autoanalyze replans it.
SELECT e.id, e.status, e.abort, e.owner, e.lease_token
FROM unnest($1::text[]) AS u (id)
CROSS JOIN LATERAL (
    SELECT id, status, abort, owner, lease_token FROM microsaga_executions
    WHERE id = u.id
    OFFSET 0
) e;

-- name: write_transitions
-- The outcome of a batch of transitions, decided by the store from read_executions:
-- $1 id, $2 .. $5 the status, abort, owner and lease token read, $6 status,
-- $7 has_response, $8 response_body, $9 response_header, $10 error, $11 release,
-- $12 at; then the step runs ($13 .. $24: execution_id, step_id, phase, status,
-- attempts, request_body, request_header, response_body, response_header, error,
-- started_at, finished_at), one per (execution_id, step_id, phase). An execution whose
-- row changed since it was read (a control request, a takeover) is left alone with its
-- step runs, and not returned: the store decides again on a fresh read.
WITH u AS (
    SELECT * FROM unnest(
        $1::text[], $2::smallint[], $3::smallint[], $4::text[], $5::bigint[],
        $6::smallint[], $7::boolean[], $8::bytea[], $9::json[], $10::text[],
        $11::boolean[], $12::double precision[]
    ) AS u (
        id, seen_status, seen_abort, seen_owner, seen_token, status, has_response,
        response_body, response_header, error, release, at
    )
),
-- rows locked in id order, as every statement that locks several execution rows does,
-- so that concurrent batches and lease renewals never deadlock
locked AS MATERIALIZED (
    SELECT e.id FROM microsaga_executions e
    WHERE e.id IN (SELECT id FROM u)
    ORDER BY e.id
    FOR UPDATE
),
done AS (
    UPDATE microsaga_executions e SET
        status = u.status,
        response_body = CASE WHEN u.has_response
            THEN u.response_body ELSE e.response_body END,
        response_header = CASE WHEN u.has_response
            THEN u.response_header ELSE e.response_header END,
        error = nullif(coalesce(u.error, e.error), ''),
        owner = CASE WHEN u.release THEN NULL ELSE e.owner END,
        lease_until = CASE WHEN u.release THEN 0 ELSE e.lease_until END,
        updated_at = u.at,
        recovery_attempts = 0  -- its worker is alive: see claim
    FROM u JOIN locked l ON l.id = u.id
    WHERE e.id = u.id
      AND e.status = u.seen_status
      AND e.abort = u.seen_abort
      AND e.owner = u.seen_owner
      AND e.lease_token = u.seen_token
    RETURNING e.id
),
steps AS (
    INSERT INTO microsaga_step_runs (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    SELECT s.* FROM unnest(
        $13::text[], $14::text[], $15::smallint[], $16::smallint[], $17::integer[],
        $18::bytea[], $19::json[], $20::bytea[], $21::json[], $22::text[],
        $23::double precision[], $24::double precision[]
    ) AS s (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    WHERE s.execution_id IN (SELECT id FROM done)
    ON CONFLICT (execution_id, step_id, phase) DO UPDATE SET
        status = excluded.status,
        attempts = excluded.attempts,
        request_body = excluded.request_body,
        request_header = excluded.request_header,
        response_body = excluded.response_body,
        response_header = excluded.response_header,
        error = excluded.error,
        started_at = excluded.started_at,
        finished_at = excluded.finished_at
)
SELECT id FROM done;

-- name: write_expected
-- A batch of transitions of distinct executions in one statement, without reading
-- first: what the usual transition finds (its lease token, an owner, the status it
-- expects) is the condition of its write. $1 id, $2 lease token, $3 the status
-- expected, $4 status, $5 has_response, $6 response_body, $7 response_header, $8 error,
-- $9 release, $10 at; then the step runs ($11 .. $22, as write_transitions'); $23 the
-- abort request each writer knows of (a later one stored: not as expected). Returns
-- the id and abort of each execution written; one not returned is left alone with its
-- step runs, and the store decides on it from read_executions.
WITH u AS (
    SELECT * FROM unnest(
        $1::text[], $2::bigint[], $3::smallint[], $4::smallint[], $5::boolean[],
        $6::bytea[], $7::json[], $8::text[], $9::boolean[], $10::double precision[],
        $23::smallint[]
    ) AS u (
        id, token, expect, status, has_response, response_body, response_header, error,
        release, at, known_abort
    )
),
-- rows locked in id order, as every statement that locks several execution rows does
locked AS MATERIALIZED (
    SELECT e.id FROM microsaga_executions e
    WHERE e.id IN (SELECT id FROM u)
    ORDER BY e.id
    FOR UPDATE
),
done AS (
    UPDATE microsaga_executions e SET
        status = u.status,
        response_body = CASE WHEN u.has_response
            THEN u.response_body ELSE e.response_body END,
        response_header = CASE WHEN u.has_response
            THEN u.response_header ELSE e.response_header END,
        error = nullif(coalesce(u.error, e.error), ''),
        owner = CASE WHEN u.release THEN NULL ELSE e.owner END,
        lease_until = CASE WHEN u.release THEN 0 ELSE e.lease_until END,
        updated_at = u.at,
        recovery_attempts = 0  -- its worker is alive: see claim
    FROM u JOIN locked l ON l.id = u.id
    WHERE e.id = u.id
      AND e.lease_token = u.token
      AND e.owner IS NOT NULL
      AND e.status = u.expect
      AND e.abort <= u.known_abort
    RETURNING e.id, e.abort
),
steps AS (
    INSERT INTO microsaga_step_runs (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    SELECT s.* FROM unnest(
        $11::text[], $12::text[], $13::smallint[], $14::smallint[], $15::integer[],
        $16::bytea[], $17::json[], $18::bytea[], $19::json[], $20::text[],
        $21::double precision[], $22::double precision[]
    ) AS s (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    WHERE s.execution_id IN (SELECT id FROM done)
    ON CONFLICT (execution_id, step_id, phase) DO UPDATE SET
        status = excluded.status,
        attempts = excluded.attempts,
        request_body = excluded.request_body,
        request_header = excluded.request_header,
        response_body = excluded.response_body,
        response_header = excluded.response_header,
        error = excluded.error,
        started_at = excluded.started_at,
        finished_at = excluded.finished_at
)
SELECT id, abort FROM done;

-- name: write_expected_one
-- write_expected for one execution with at most two step runs (the step that ended and
-- the next one started): values, not arrays, which cost the driver and the server more
-- to pass (about 30 us a statement); the UPDATE alone locks the one row. $1 .. $10 as
-- write_expected's; the step runs $11 .. $22 and $23 .. $34, in write_transitions'
-- columns, either all NULL when there is no such run; $35 the abort its writer knows.
WITH done AS (
    UPDATE microsaga_executions e SET
        status = $4::smallint,
        response_body = CASE WHEN $5::boolean THEN $6::bytea ELSE e.response_body END,
        response_header = CASE WHEN $5::boolean THEN $7::json ELSE e.response_header END,
        error = nullif(coalesce($8::text, e.error), ''),
        owner = CASE WHEN $9::boolean THEN NULL ELSE e.owner END,
        lease_until = CASE WHEN $9::boolean THEN 0 ELSE e.lease_until END,
        updated_at = $10::double precision,
        recovery_attempts = 0  -- its worker is alive: see claim
    -- the status is compared with IS NOT DISTINCT FROM, which no index serves, so that
    -- the row is found by its id: made on a fresh table, where every index looks as
    -- good, the generic plan otherwise read it off by_status (every running execution)
    WHERE e.id = $1::text
      AND e.lease_token = $2::bigint
      AND e.owner IS NOT NULL
      AND e.status IS NOT DISTINCT FROM $3::smallint
      AND e.abort <= $35::smallint
    RETURNING e.id, e.abort
),
steps AS (
    INSERT INTO microsaga_step_runs (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    SELECT s.* FROM (VALUES
        ($11::text, $12::text, $13::smallint, $14::smallint, $15::integer, $16::bytea,
         $17::json, $18::bytea, $19::json, $20::text, $21::double precision,
         $22::double precision),
        ($23::text, $24::text, $25::smallint, $26::smallint, $27::integer, $28::bytea,
         $29::json, $30::bytea, $31::json, $32::text, $33::double precision,
         $34::double precision)
    ) AS s (
        execution_id, step_id, phase, status, attempts, request_body, request_header,
        response_body, response_header, error, started_at, finished_at
    )
    WHERE s.execution_id IN (SELECT id FROM done)
    ON CONFLICT (execution_id, step_id, phase) DO UPDATE SET
        status = excluded.status,
        attempts = excluded.attempts,
        request_body = excluded.request_body,
        request_header = excluded.request_header,
        response_body = excluded.response_body,
        response_header = excluded.response_header,
        error = excluded.error,
        started_at = excluded.started_at,
        finished_at = excluded.finished_at
)
SELECT id, abort FROM done;

-- name: notify
-- Delivered when the transaction commits, so a woken worker finds the row.
SELECT pg_notify($1, $2);

-- name: ping
SELECT 1;

-- leases -----------------------------------------------------------------------------

-- name: claim
-- $1 owner, $2 lease until, $3 now, $4 limit, $5 owners known to run still (their
-- rows taken are no recovery attempt). SKIP LOCKED: workers claiming at the
-- same time take different executions instead of queueing on the same rows. Never the
-- claimer's own rows: a live worker whose lease ran out (a stall, the server away)
-- still runs them, and its heartbeat renews them. Oldest first; the planner reads
-- the due ones off the index by lease expiry, not the parked ones. A row still owned
-- was left by a worker that died (or stalled): a recovery attempt. $6 some ids to
-- claim among only (a flow that does not claim takes its child's rollback), or NULL.
-- $7 ids never to claim (those the claimer left lately, unable to run them).
UPDATE microsaga_executions SET
    recovery_attempts = recovery_attempts
        + CASE WHEN owner IS NULL OR owner = ANY($5::text[]) THEN 0 ELSE 1 END,
    owner = $1,
    lease_token = lease_token + 1,
    lease_until = $2,
    status = CASE WHEN status = 0 THEN 1 ELSE status END,
    note = NULL
WHERE seq IN (
    SELECT seq FROM microsaga_executions
    WHERE status IN (0, 1, 6) AND lease_until <= $3 AND owner IS DISTINCT FROM $1
      AND ($6::text[] IS NULL OR id = ANY($6::text[]))
      AND id <> ALL($7::text[])
    ORDER BY seq
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
RETURNING id, lease_token, recovery_attempts;

-- name: renew
-- $1 owner, $2 lease until, $3 the ids the worker runs. Locks in id order, as
-- lock_executions does.
UPDATE microsaga_executions SET lease_until = $2
WHERE id IN (
    SELECT id FROM microsaga_executions
    WHERE owner = $1 AND id = ANY($3::text[])
    ORDER BY id FOR UPDATE
)
RETURNING id;

-- name: release_all
-- $1 owner, $2 the channel: what a restarted worker's previous life held is free now.
WITH freed AS (
    UPDATE microsaga_executions
    SET owner = NULL, lease_until = 0, recovery_attempts = recovery_attempts + 1
    WHERE id IN (
        SELECT id FROM microsaga_executions WHERE owner = $1 ORDER BY id FOR UPDATE
    )
    RETURNING id
)
SELECT count(*), pg_notify($2, 'released') FROM freed;

-- name: lease_owners
-- Read off the partial index microsaga_executions_by_owner.
SELECT DISTINCT owner FROM microsaga_executions WHERE owner IS NOT NULL;

-- name: due_between
-- Whether a runnable execution became due in ($1, $2]: a range of the index of runnable
-- executions by lease expiry.
SELECT 1 FROM microsaga_executions
WHERE status IN (0, 1, 6) AND lease_until > $1 AND lease_until <= $2
LIMIT 1;

-- name: held_by
-- The runnable executions an owner holds, off the partial index by owner.
SELECT id, lease_token, lease_until FROM microsaga_executions
WHERE owner = $1 AND status IN (0, 1, 6);

-- name: lease_expiry
-- The latest expiry of the leases an owner holds, off the partial index by owner.
SELECT max(lease_until) FROM microsaga_executions WHERE owner = $1;

-- name: release
-- $1 id, $2 token, $3 until, $4 the channel: another worker may take it now (or at
-- $3), so tell them to look; $5 a note saying why it waits (or NULL).
WITH released AS (
    UPDATE microsaga_executions SET owner = NULL, lease_until = $3, note = $5
    WHERE id = $1 AND lease_token = $2
    RETURNING id
)
SELECT pg_notify($4, 'release') FROM released;

-- name: load_executions
-- Executions with their step runs (NULLs when none), in one statement, so one
-- snapshot; their definitions (immutable) come from load_definitions. The ids are
-- repeated on the step runs: the generic plan of a prepared statement, not knowing how
-- many ids come, would otherwise hash-join a scan of every step run. Each execution is
-- looked up by its id on its own, as in read_executions.
SELECT e.id, e.workflow_id, e.version, e.definition, e.status, e.abort, e.request_body,
       e.request_header, e.start_step, e.reverse, e.step_timeout, e.deadline_at,
       e.lease_token, e.created_at, e.parent_id,
       s.step_id, s.phase, s.status, s.attempts, s.request_body, s.request_header,
       s.response_body, s.response_header, s.error, s.started_at, s.finished_at
FROM (SELECT DISTINCT unnest($1::text[])) AS u (id)
CROSS JOIN LATERAL (SELECT * FROM microsaga_executions WHERE id = u.id OFFSET 0) e
LEFT JOIN microsaga_step_runs s ON s.execution_id = e.id AND s.execution_id = ANY($1::text[]);

-- name: definition_of
-- What a signal is checked against: the status and the definition's hash, no step run.
SELECT status, definition FROM microsaga_executions WHERE id = $1;

-- name: load_definitions
SELECT hash, workflow_id, body, step_ids FROM microsaga_definitions
WHERE hash = ANY($1::text[]);

-- name: step_rows_of_many
SELECT execution_id, step_id, phase, status, attempts, request_body, request_header,
       response_body, response_header, error, started_at, finished_at
FROM microsaga_step_runs WHERE execution_id = ANY($1::text[]);

-- name: map_runs
-- The runs <step>[<i>] of the steps $2 (the definition's step ids) of execution $1,
-- counted: a row (step, status, compensation status, count, first index, NULL) for
-- each, then the runs to read in full: (step, NULL, NULL, NULL, index, run id) for each
-- run of a step of no more than $3 runs, and for the first $3 runs of another that
-- are failed or undoing (status in $4, or their compensation's in $5). The execution's
-- forward rows off the primary key, each compensation by its key (a subquery: as a
-- join, with the statistics of a new map, the planner read every compensation row for
-- each run). rtrim leaves '<step>[' of a run (a regexp took 5 times as long); its
-- index is digits.
WITH runs AS MATERIALIZED (
    SELECT step_id, status, left(open, -1) AS head,
           substr(step_id, length(open) + 1, length(step_id) - length(open) - 1)::bigint AS idx,
           (SELECT c.status FROM microsaga_step_runs c
            WHERE c.execution_id = $1 AND c.step_id = r.step_id AND c.phase = 1) AS undo
    FROM (
        SELECT step_id, status, rtrim(step_id, '0123456789]') AS open
        FROM microsaga_step_runs
        WHERE execution_id = $1 AND phase = 0 AND step_id LIKE '%]'
        OFFSET 0
    ) r
    WHERE right(open, 1) = '['
      AND length(step_id) - length(open) >= 2
      AND position(']' in substr(step_id, length(open) + 1, length(step_id) - length(open) - 1)) = 0
      AND left(open, -1) = ANY($2::text[]) AND step_id <> ALL($2::text[])
),
sizes AS (SELECT head, count(*) AS n FROM runs GROUP BY head)
SELECT head, status, undo, count(*), min(idx), NULL::text FROM runs
GROUP BY head, status, undo
UNION ALL
SELECT head, NULL, NULL, NULL, idx, step_id FROM (
    SELECT r.head, r.idx, r.step_id,
           row_number() OVER (PARTITION BY r.head ORDER BY r.idx) AS nth
    FROM runs r JOIN sizes z ON z.head = r.head
    WHERE z.n <= $3 OR r.status = ANY($4::smallint[]) OR r.undo = ANY($5::smallint[])
) listed
WHERE nth <= $3;

-- name: step_rows_named
-- The step runs (both phases) of one execution named in $2, each off the primary key.
SELECT execution_id, step_id, phase, status, attempts, request_body, request_header,
       response_body, response_header, error, started_at, finished_at
FROM microsaga_step_runs WHERE execution_id = $1 AND step_id = ANY($2::text[]);

-- control ----------------------------------------------------------------------------

-- name: control_row
-- A step RUNNING or WAITING (1, 8): an abort then needs a worker, to give up the waits.
SELECT status, abort, owner, lease_until,
       EXISTS (
           SELECT 1 FROM microsaga_step_runs s
           WHERE s.execution_id = e.id AND s.status IN (1, 8)
       ),
       EXISTS (SELECT 1 FROM microsaga_step_runs s
               WHERE s.execution_id = e.id AND s.phase = 1 AND s.status = 2),
       EXISTS (SELECT 1 FROM microsaga_step_runs s
               WHERE s.execution_id = e.id AND s.phase = 0 AND s.status = 3)
FROM microsaga_executions e WHERE id = $1
FOR UPDATE OF e;

-- name: control_update
-- $1 id, $2 status, $3 abort, $4 now, $5 reason, $6 free the lease.
UPDATE microsaga_executions SET
    status = $2,
    abort = $3,
    updated_at = $4,
    error = coalesce($5, error),
    owner = CASE WHEN $6 THEN NULL ELSE owner END,
    lease_until = CASE WHEN $6 THEN 0 ELSE lease_until END,
    note = CASE WHEN $6 THEN NULL ELSE note END
WHERE id = $1;

-- name: retry_compensations
UPDATE microsaga_step_runs SET status = 0
WHERE execution_id = $1 AND phase = 1 AND status = 2;

-- name: retry_steps
-- $1 id, $2 every failed step, $3 else those named, $4 their request body (or NULL).
-- Failed forward steps back to PENDING with a fresh retry budget.
UPDATE microsaga_step_runs SET
    status = 0, attempts = 0, request_body = $4, request_header = NULL,
    response_body = NULL, response_header = NULL, finished_at = NULL
WHERE execution_id = $1 AND phase = 0 AND status = 2 AND ($2 OR step_id = ANY($3::text[]));

-- name: lock_controls
-- Held from here to the commit: a control row gets its seq only after the one before
-- it committed, so a reader that sees seq N also sees every seq below N. Without it,
-- sequence values could commit out of order and "seq > last seen" would miss a row.
-- An advisory lock rather than LOCK TABLE, which would also wait for autovacuum.
SELECT pg_advisory_xact_lock(8307431127460185602);

-- name: insert_control
INSERT INTO microsaga_controls (execution_id, action, at) VALUES ($1, $2, $3);

-- name: controls_after
SELECT seq, execution_id FROM microsaga_controls WHERE seq > $1 ORDER BY seq;

-- name: last_control
SELECT coalesce(max(seq), 0) FROM microsaga_controls;

-- name: prune_controls
DELETE FROM microsaga_controls WHERE at < $1;

-- queries ----------------------------------------------------------------------------

-- name: give_up_unread_steps
-- Store.give_up_unread_steps: the step runs of an execution ABORTED without
-- compensation (abort 2) left RUNNING (1) or WAITING (8) become PENDING (0).
-- $1 id, $2 error, $3 at.
UPDATE microsaga_step_runs SET status = 0, error = $2, finished_at = $3
WHERE execution_id = $1 AND status IN (1, 8)
  AND EXISTS (
      SELECT 1 FROM microsaga_executions WHERE id = $1 AND status = 4 AND abort = 2
  );

-- name: get_status
SELECT status, abort FROM microsaga_executions WHERE id = $1;

-- name: count_waiting
-- The WAITING steps of RUNNING executions: those off microsaga_executions_by_status,
-- their forward rows by primary key (LATERAL ... OFFSET 0: a nested loop, never a scan
-- of every step row; step_runs has no index on status, which would stop HOT updates).
SELECT count(*) FROM microsaga_executions AS e
CROSS JOIN LATERAL (
    SELECT 1 FROM microsaga_step_runs AS s
    WHERE s.execution_id = e.id AND s.phase = 0 AND s.status = 8
    OFFSET 0
) AS w
WHERE e.status = 1;

-- name: seq_of
SELECT seq FROM microsaga_executions WHERE id = $1;

-- name: get_execution
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.id = $1;

-- One query per combination of filters rather than "$n IS NULL OR ...", which a
-- cached generic plan could not serve from the matching index.

-- name: list_executions
-- $1 before (seq), $2 limit.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.seq < $1
ORDER BY e.seq DESC
LIMIT $2;

-- name: list_executions_by_workflow
-- $1 before (seq), $2 limit, $3 workflow id.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.seq < $1 AND e.workflow_id = $3
ORDER BY e.seq DESC
LIMIT $2;

-- name: list_executions_by_status
-- $1 before (seq), $2 limit, $3 status.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.seq < $1 AND e.status = $3
ORDER BY e.seq DESC
LIMIT $2;

-- name: list_executions_by_workflow_status
-- $1 before (seq), $2 limit, $3 workflow id, $4 status.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.seq < $1 AND e.workflow_id = $3 AND e.status = $4
ORDER BY e.seq DESC
LIMIT $2;

-- name: list_executions_by_redrive
-- $1 before (seq), $2 limit, $3 redrive_of, $4 workflow id or null, $5 status or null.
-- An execution has few redrives: microsaga_executions_by_redrive serves every
-- combination of the other filters.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM microsaga_executions e JOIN microsaga_definitions d ON d.hash = e.definition
WHERE e.seq < $1 AND e.redrive_of = $3
  AND ($4::text IS NULL OR e.workflow_id = $4)
  AND ($5::smallint IS NULL OR e.status = $5)
ORDER BY e.seq DESC
LIMIT $2;

-- name: prune_executions
-- $1 statuses, $2 before, $3 limit: up to $3 finished executions last changed before
-- $2, oldest first, with their step runs and signals. A child execution goes only with
-- its ancestors: one of them still stored and not pruned by the same rule may yet
-- compensate it as a unit (or resume its rollback). A batch at a time, skipping rows
-- another transaction holds, so that pruning never makes a worker wait long. Each
-- delete takes its keys as an array (= ANY (ARRAY(...))): the generic plan of the
-- prepared statement, not knowing how many rows come, would otherwise hash-join a scan
-- of the whole table (0.8 s a batch with a million executions stored, against 20 ms).
WITH gone AS (
    DELETE FROM microsaga_executions WHERE seq = ANY (ARRAY(
        SELECT e.seq FROM microsaga_executions e
        WHERE e.status = ANY($1::smallint[]) AND e.updated_at < $2
        AND NOT EXISTS (
            WITH RECURSIVE up (id) AS (
                SELECT e.parent_id
                UNION
                SELECT a.parent_id FROM microsaga_executions a JOIN up ON a.id = up.id
                WHERE a.parent_id IS NOT NULL
            )
            SELECT 1 FROM up JOIN microsaga_executions a ON a.id = up.id
            WHERE NOT (a.status = ANY($1::smallint[])) OR a.updated_at >= $2
        )
        ORDER BY e.seq LIMIT $3
        FOR UPDATE OF e SKIP LOCKED
    ))
    RETURNING id
),
steps AS (
    DELETE FROM microsaga_step_runs WHERE execution_id = ANY (ARRAY(SELECT id FROM gone))
),
signals AS (
    DELETE FROM microsaga_signals WHERE execution_id = ANY (ARRAY(SELECT id FROM gone))
),
refs AS (
    DELETE FROM microsaga_payload_refs
    WHERE execution_id = ANY (ARRAY(SELECT id FROM gone))
    RETURNING hash
),
-- the payloads no other execution refers to (this statement's deletes are not seen
-- by its own subqueries: the references of the executions pruned are left out)
payloads AS (
    DELETE FROM microsaga_payloads WHERE hash = ANY (ARRAY(
        SELECT p.hash FROM microsaga_payloads p
        WHERE p.hash = ANY (ARRAY(SELECT hash FROM refs))
        AND NOT EXISTS (
            SELECT 1 FROM microsaga_payload_refs r
            WHERE r.hash = p.hash AND r.execution_id NOT IN (SELECT id FROM gone)
        )
        -- those a commit is about to refer to again are kept (existing_payloads)
        FOR UPDATE SKIP LOCKED
    ))
)
SELECT count(*) FROM gone;

-- waiting ------------------------------------------------------------------------

-- name: signal_row
-- Locked: a park of the same execution waits for this transaction, and then sees the
-- signal (or this one sees the execution parked, and wakes it).
SELECT status, owner FROM microsaga_executions WHERE id = $1 FOR UPDATE;

-- name: insert_signal
-- A second signal of the same event is kept for nothing: the first one counts.
INSERT INTO microsaga_signals (execution_id, event, body, header, at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (execution_id, event) DO NOTHING;

-- name: wake
-- A parked execution (no owner) is claimable now; one with an owner is told through
-- the control row that goes with this. After lock_execution, in the same transaction:
-- a park under way commits first, and this statement's snapshot sees the row parked.
UPDATE microsaga_executions SET lease_until = 0
WHERE id = $1 AND owner IS NULL AND status IN (0, 1, 6);

-- name: signals_of
SELECT event, body, header FROM microsaga_signals WHERE execution_id = $1;

-- name: lock_execution
SELECT lease_token FROM microsaga_executions WHERE id = $1 FOR UPDATE;

-- name: park_blocked
-- Whether a signal the execution waits for, or the end of a child it waits for, is
-- there already: then it does not park. The children are looked up by id one by one,
-- as in read_executions (else by_status: every finished execution).
SELECT EXISTS (
    SELECT 1 FROM microsaga_signals WHERE execution_id = $1 AND event = ANY($2::text[])
) OR EXISTS (
    SELECT 1 FROM unnest($3::text[]) AS u (id)
    CROSS JOIN LATERAL (
        SELECT status FROM microsaga_executions WHERE id = u.id OFFSET 0
    ) e
    WHERE e.status IN (2, 3, 4)
);

-- name: park
-- Only a RUNNING execution with no abort request: a suspend or an abort that came first
-- is the run's to act on (an abort without compensation leaves the status RUNNING).
-- IS NOT DISTINCT FROM: the row found by its id, not off by_status (write_expected_one).
UPDATE microsaga_executions SET owner = NULL, lease_until = $3, note = $4
WHERE id = $1 AND lease_token = $2 AND owner IS NOT NULL AND status IS NOT DISTINCT FROM 1
  AND abort = 0
RETURNING id;

-- payloads ----------------------------------------------------------------------------

-- name: existing_payloads
-- Of the hashes $1, those stored: a commit sends only the others. Locked until the
-- commit's end: a prune running meanwhile skips them (prune_executions), and one
-- that deleted one first has this wait and not find it, so that it is sent again.
SELECT hash FROM microsaga_payloads WHERE hash = ANY($1::text[]) FOR KEY SHARE;

-- name: insert_payloads
-- $1 hashes, $2 bodies; $3 execution ids, $4 hashes they refer to.
WITH bodies AS (
    INSERT INTO microsaga_payloads (hash, body)
    SELECT * FROM unnest($1::text[], $2::bytea[])
    ON CONFLICT (hash) DO NOTHING
)
INSERT INTO microsaga_payload_refs (execution_id, hash)
SELECT * FROM unnest($3::text[], $4::text[])
ON CONFLICT DO NOTHING;

-- name: load_payloads
SELECT hash, body FROM microsaga_payloads WHERE hash = ANY($1::text[]);
