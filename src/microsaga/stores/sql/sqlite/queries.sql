-- Named queries of the SQLite store. Each starts with "-- name: NAME".

-- name: schema_version
-- The file's schema version: a header field, read without touching a table.
PRAGMA user_version;

-- name: has_definition
SELECT 1 FROM definitions WHERE hash = ?;

-- name: insert_definition
INSERT INTO definitions (hash, workflow_id, body, step_ids)
VALUES (?, ?, ?, ?)
ON CONFLICT (hash) DO NOTHING;

-- name: insert_execution
INSERT INTO executions (
    id, workflow_id, version, definition, status, request_body, request_header,
    start_step, reverse, step_timeout, deadline_at, owner, lease_token, lease_until,
    created_at, parent_id, redrive_of, updated_at
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?15)
ON CONFLICT (id) DO NOTHING;

-- name: transition
-- Fenced by the lease token; every SET expression reads the row before the update.
-- A commit sets recovery_attempts back to 0: the execution's worker is alive.
UPDATE executions SET
    updated_at = :at,
    recovery_attempts = 0,
    applied = (status = :expect AND abort <= :abort),
    status = CASE WHEN status = :expect AND abort <= :abort AND :status IS NOT NULL
        THEN :status ELSE status END,
    response_body = CASE WHEN status = :expect AND abort <= :abort AND :has_response
        THEN :response_body ELSE response_body END,
    response_header = CASE WHEN status = :expect AND abort <= :abort AND :has_response
        THEN :response_header ELSE response_header END,
    error = CASE WHEN status = :expect AND abort <= :abort AND :error IS NOT NULL
        THEN nullif(:error, '') ELSE error END,
    owner = CASE WHEN status = :expect AND abort <= :abort AND :release
        THEN NULL ELSE owner END,
    lease_until = CASE WHEN status = :expect AND abort <= :abort AND :release
        THEN 0 ELSE lease_until END
WHERE id = :id AND lease_token = :token AND owner IS NOT NULL
RETURNING status, abort, applied;

-- name: transition_records
-- The same, for a transition that only writes step records (most of them: a step's
-- response with the next step's start). It sets no indexed column: SQLite rewrites
-- the entries of every index whose column an UPDATE sets, even to the same value.
UPDATE executions SET
    updated_at = :at,
    recovery_attempts = 0,
    applied = (status = :expect AND abort <= :abort)
WHERE id = :id AND lease_token = :token AND owner IS NOT NULL
RETURNING status, abort, applied;

-- name: upsert_step
INSERT OR REPLACE INTO step_runs (
    execution_id, step_id, phase, status, attempts, request_body, request_header,
    response_body, response_header, error, started_at, finished_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: claim
-- Never the claimer's own rows: a live worker whose lease ran out (a stall, the store
-- away) still runs them, and its heartbeat renews them. Oldest first, of those read
-- off the index of runnable executions by lease expiry: only the due ones. Never the
-- parked executions whose time has not come (by status, the planner's own choice, it
-- would read every waiting execution at every claim). A row still owned was left by
-- a worker that died (or stalled): a recovery attempt, unless its owner is one of
-- :alive (a JSON list), workers known to run still. Among the ids of :only (a JSON list)
-- only, unless it is NULL (a flow that does not claim takes its child's rollback); never
-- the ids of :skip (a JSON list: those the claimer left lately, unable to run them).
UPDATE executions SET
    recovery_attempts = recovery_attempts
        + (owner IS NOT NULL AND owner NOT IN (SELECT value FROM json_each(:alive))),
    owner = :owner,
    lease_token = lease_token + 1,
    lease_until = :until,
    status = CASE WHEN status = 0 THEN 1 ELSE status END,
    note = NULL
WHERE seq IN (
    SELECT seq FROM executions INDEXED BY executions_claimable
    WHERE status IN (0, 1, 6) AND lease_until <= :now AND owner IS NOT :owner
      AND (:only IS NULL OR id IN (SELECT value FROM json_each(:only)))
      AND id NOT IN (SELECT value FROM json_each(:skip))
    ORDER BY seq LIMIT :limit
)
RETURNING id, lease_token, recovery_attempts;

-- name: renew
UPDATE executions SET lease_until = :until
WHERE owner = :owner AND id IN (SELECT value FROM json_each(:ids))
RETURNING id;

-- name: release_all
-- The owner died: a recovery attempt for each execution it held.
UPDATE executions SET owner = NULL, lease_until = 0, recovery_attempts = recovery_attempts + 1
WHERE owner = ?;

-- name: lease_owners
-- Read off the partial index executions_by_owner.
SELECT DISTINCT owner FROM executions WHERE owner IS NOT NULL;

-- name: due_between
-- Whether a runnable execution became due in (?1, ?2]: a range of the index of runnable
-- executions by lease expiry.
SELECT 1 FROM executions INDEXED BY executions_claimable
WHERE status IN (0, 1, 6) AND lease_until > ?1 AND lease_until <= ?2
LIMIT 1;

-- name: held_by
-- The runnable executions an owner holds, off the partial index by owner.
SELECT id, lease_token, lease_until FROM executions
WHERE owner = ? AND status IN (0, 1, 6);

-- name: lease_expiry
-- The latest expiry of the leases an owner holds, off the partial index by owner.
SELECT max(lease_until) FROM executions WHERE owner = ?;

-- name: release
UPDATE executions SET owner = NULL, lease_until = :until, note = :note
WHERE id = :id AND lease_token = :token;

-- name: load_executions
-- Executions with their step runs (NULLs when none), in one statement, so one
-- snapshot; their definitions (immutable) come from load_definitions.
SELECT e.id, e.workflow_id, e.version, e.definition, e.status, e.abort, e.request_body,
       e.request_header, e.start_step, e.reverse, e.step_timeout, e.deadline_at,
       e.lease_token, e.created_at, e.parent_id,
       s.step_id, s.phase, s.status, s.attempts, s.request_body, s.request_header,
       s.response_body, s.response_header, s.error, s.started_at, s.finished_at
FROM executions e
LEFT JOIN step_runs s ON s.execution_id = e.id
WHERE e.id IN (SELECT value FROM json_each(?));

-- name: definition_of
-- What a signal is checked against: the status and the definition's hash, no step run.
SELECT status, definition FROM executions WHERE id = ?;

-- name: load_definitions
SELECT hash, workflow_id, body, step_ids FROM definitions
WHERE hash IN (SELECT value FROM json_each(?));

-- name: step_rows_of_many
SELECT execution_id, step_id, phase, status, attempts, request_body, request_header,
       response_body, response_header, error, started_at, finished_at
FROM step_runs WHERE execution_id IN (SELECT value FROM json_each(?));

-- name: map_runs
-- The runs <step>[<i>] of the steps :steps (a JSON list: the definition's step ids) of
-- execution :id, counted: a row (step, status, compensation status, count, first index,
-- NULL) for each, then the runs to read in full: (step, NULL, NULL, NULL, index, run id)
-- for each run of a step of no more than :limit runs, and for the first :limit runs of
-- another that are failed or undoing (status in :undoing, or their compensation's in
-- :comp_undoing; JSON lists). The execution's rows off the primary key, each
-- compensation by its key. rtrim leaves '<step>[' of a run; its index is digits.
WITH shaped AS (
    SELECT step_id, status, rtrim(step_id, '0123456789]') AS open
    FROM step_runs
    WHERE execution_id = :id AND phase = 0 AND step_id GLOB '*[[][0-9]*]'
),
runs AS (
    SELECT r.step_id, r.status, c.status AS undo,
           substr(r.open, 1, length(r.open) - 1) AS head,
           CAST(substr(r.step_id, length(r.open) + 1) AS INTEGER) AS idx
    FROM shaped r
    LEFT JOIN step_runs c ON c.execution_id = :id AND c.step_id = r.step_id AND c.phase = 1
    WHERE substr(r.open, -1) = '['
      AND instr(substr(r.step_id, length(r.open) + 1, length(r.step_id) - length(r.open) - 1), ']') = 0
      AND length(r.step_id) - length(r.open) >= 2
      AND substr(r.open, 1, length(r.open) - 1) IN (SELECT value FROM json_each(:steps))
      AND r.step_id NOT IN (SELECT value FROM json_each(:steps))
),
sizes AS (SELECT head, count(*) AS n FROM runs GROUP BY head)
SELECT head, status, undo, count(*), min(idx), NULL FROM runs GROUP BY head, status, undo
UNION ALL
SELECT head, NULL, NULL, NULL, idx, step_id FROM (
    SELECT r.head, r.idx, r.step_id,
           row_number() OVER (PARTITION BY r.head ORDER BY r.idx) AS nth
    FROM runs r JOIN sizes z ON z.head = r.head
    WHERE z.n <= :limit
       OR r.status IN (SELECT value FROM json_each(:undoing))
       OR r.undo IN (SELECT value FROM json_each(:comp_undoing))
)
WHERE nth <= :limit;

-- name: step_rows_named
-- The step runs (both phases) of one execution named in :ids (a JSON list), each off
-- the primary key.
SELECT execution_id, step_id, phase, status, attempts, request_body, request_header,
       response_body, response_header, error, started_at, finished_at
FROM step_runs
WHERE execution_id = :id AND step_id IN (SELECT value FROM json_each(:ids));

-- name: control_row
-- A step RUNNING or WAITING (1, 8): an abort then needs a worker, to give up the waits.
SELECT status, abort, owner, lease_until,
       EXISTS (SELECT 1 FROM step_runs s WHERE s.execution_id = e.id AND s.status IN (1, 8)),
       EXISTS (SELECT 1 FROM step_runs s
               WHERE s.execution_id = e.id AND s.phase = 1 AND s.status = 2),
       EXISTS (SELECT 1 FROM step_runs s
               WHERE s.execution_id = e.id AND s.phase = 0 AND s.status = 3)
FROM executions e WHERE id = ?;

-- name: control_update
UPDATE executions SET
    status = :status,
    abort = :abort,
    updated_at = :now,
    error = coalesce(:reason, error),
    owner = CASE WHEN :free THEN NULL ELSE owner END,
    lease_until = CASE WHEN :free THEN 0 ELSE lease_until END,
    note = CASE WHEN :free THEN NULL ELSE note END
WHERE id = :id;

-- name: retry_compensations
UPDATE step_runs SET status = 0 WHERE execution_id = ? AND phase = 1 AND status = 2;

-- name: retry_steps
-- Failed forward steps (all of them, or those named) back to PENDING with a fresh
-- retry budget; a request body given becomes their request (a redrive's input).
UPDATE step_runs SET
    status = 0, attempts = 0, request_body = :body, request_header = NULL,
    response_body = NULL, response_header = NULL, finished_at = NULL
WHERE execution_id = :id AND phase = 0 AND status = 2
  AND (:all OR step_id IN (SELECT value FROM json_each(:steps)));

-- name: insert_control
INSERT INTO controls (execution_id, action, at) VALUES (?, ?, ?);

-- name: controls_after
SELECT seq, execution_id FROM controls WHERE seq > ? ORDER BY seq;

-- name: last_control
SELECT coalesce(max(seq), 0) FROM controls;

-- name: prune_controls
DELETE FROM controls WHERE at < ?;

-- name: give_up_unread_steps
-- Store.give_up_unread_steps: the step runs of an execution ABORTED without
-- compensation (abort 2) left RUNNING (1) or WAITING (8) become PENDING (0).
UPDATE step_runs SET status = 0, error = :error, finished_at = :at
WHERE execution_id = :id AND status IN (1, 8)
  AND EXISTS (SELECT 1 FROM executions WHERE id = :id AND status = 4 AND abort = 2);

-- name: get_status
SELECT status, abort FROM executions WHERE id = ?;

-- name: count_waiting
-- The WAITING steps of RUNNING executions: those off executions_by_status, their
-- forward rows by primary key (CROSS JOIN keeps that order: never every step row).
SELECT count(*) FROM executions AS e CROSS JOIN step_runs AS s
WHERE e.status = 1 AND s.execution_id = e.id AND s.phase = 0 AND s.status = 8;

-- name: seq_of
SELECT seq FROM executions WHERE id = ?;

-- name: list_executions
-- One listing for each combination of filters (see postgres/queries.sql): an
-- optional filter written ":x IS NULL OR ..." keeps SQLite's planner off the index
-- that serves it, and a rare workflow or status was found by reading every row.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.seq < :before
ORDER BY e.seq DESC
LIMIT :limit;

-- name: list_executions_by_workflow
-- Off executions_by_workflow.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.seq < :before AND e.workflow_id = :workflow_id
ORDER BY e.seq DESC
LIMIT :limit;

-- name: list_executions_by_status
-- Off executions_by_status.
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.seq < :before AND e.status = :status
ORDER BY e.seq DESC
LIMIT :limit;

-- name: list_executions_by_workflow_status
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.seq < :before AND e.workflow_id = :workflow_id AND e.status = :status
ORDER BY e.seq DESC
LIMIT :limit;

-- name: list_executions_by_redrive
-- The redrives of one execution, off executions_by_redrive (the filter on redrive_of
-- standing alone is what lets the planner use that partial index).
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.redrive_of = :redrive_of
  AND (:workflow_id IS NULL OR e.workflow_id = :workflow_id)
  AND (:status IS NULL OR e.status = :status)
  AND e.seq < :before
ORDER BY e.seq DESC
LIMIT :limit;

-- name: get_execution
SELECT e.id, e.workflow_id, e.version, e.status, e.request_body, e.request_header,
       e.response_body, e.response_header, e.error, e.created_at, e.updated_at,
       e.deadline_at, d.step_ids, e.parent_id, e.redrive_of, e.note
FROM executions e JOIN definitions d ON d.hash = e.definition
WHERE e.id = ?;

-- name: save_workflow_latest
SELECT version, hash FROM workflows WHERE id = ? ORDER BY version DESC LIMIT 1;

-- name: insert_workflow
INSERT INTO workflows (id, version, hash, body, created_at) VALUES (?, ?, ?, ?, ?);

-- name: load_workflow_latest
SELECT id, version, hash, body, created_at FROM workflows
WHERE id = ? ORDER BY version DESC LIMIT 1;

-- name: load_workflow_version
SELECT id, version, hash, body, created_at FROM workflows WHERE id = ? AND version = ?;

-- name: list_workflows
SELECT w.id, w.version, w.hash, w.body, w.created_at FROM workflows w
WHERE w.version = (SELECT max(version) FROM workflows v WHERE v.id = w.id)
ORDER BY w.id;

-- name: remove_workflow
DELETE FROM workflows WHERE id = ?;

-- name: prune_executions
-- Up to :limit finished executions (of the statuses in :statuses) last changed before
-- :before, oldest first; their step runs and signals go with them (prune_of). A child
-- execution goes only with its ancestors: one of them still stored and not pruned by
-- the same rule may yet compensate it as a unit (or resume its rollback). Parents come
-- before their children in seq order, so a batch never takes a child without them.
DELETE FROM executions WHERE seq IN (
    SELECT e.seq FROM executions e
    WHERE e.status IN (SELECT value FROM json_each(:statuses)) AND e.updated_at < :before
    AND NOT EXISTS (
        WITH RECURSIVE up(id) AS (
            SELECT e.parent_id
            UNION
            SELECT a.parent_id FROM executions a JOIN up ON a.id = up.id
            WHERE a.parent_id IS NOT NULL
        )
        SELECT 1 FROM up JOIN executions a ON a.id = up.id
        WHERE a.status NOT IN (SELECT value FROM json_each(:statuses))
            OR a.updated_at >= :before
    )
    ORDER BY e.seq LIMIT :limit
)
RETURNING id;

-- name: prune_step_runs
DELETE FROM step_runs WHERE execution_id IN (SELECT value FROM json_each(?));

-- name: prune_signals
DELETE FROM signals WHERE execution_id IN (SELECT value FROM json_each(?));

-- waiting ------------------------------------------------------------------------

-- name: signal_row
SELECT status, owner FROM executions WHERE id = ?;

-- name: insert_signal
-- A second signal of the same event is kept for nothing: the first one counts.
INSERT INTO signals (execution_id, event, body, header, at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (execution_id, event) DO NOTHING;

-- name: wake
-- A parked execution (no owner) is claimable now; one with an owner is told through
-- the control row that goes with this.
UPDATE executions SET lease_until = 0
WHERE id = ? AND owner IS NULL AND status IN (0, 1, 6);

-- name: signals_of
SELECT event, body, header FROM signals WHERE execution_id = ?;

-- name: park_blocked
-- Whether a signal the execution waits for, or the end of a child it waits for, is
-- there already: then it does not park.
SELECT EXISTS (
    SELECT 1 FROM signals
    WHERE execution_id = :id AND event IN (SELECT value FROM json_each(:events))
) OR EXISTS (
    SELECT 1 FROM executions
    WHERE id IN (SELECT value FROM json_each(:children)) AND status IN (2, 3, 4)
);

-- name: park
-- Only a RUNNING execution with no abort request: a suspend or an abort that came first
-- is the run's to act on (an abort without compensation leaves the status RUNNING).
UPDATE executions SET owner = NULL, lease_until = :until, note = :note
WHERE id = :id AND lease_token = :token AND owner IS NOT NULL AND status = 1 AND abort = 0
RETURNING id;

-- payloads ----------------------------------------------------------------------------

-- name: existing_payloads
-- Of the hashes in the JSON array, those stored: a commit sends only the others.
SELECT hash FROM payloads WHERE hash IN (SELECT value FROM json_each(?));

-- name: insert_payload
INSERT OR IGNORE INTO payloads (hash, body) VALUES (?, ?);

-- name: insert_payload_ref
INSERT OR IGNORE INTO payload_refs (execution_id, hash) VALUES (?, ?);

-- name: load_payloads
SELECT hash, body FROM payloads WHERE hash IN (SELECT value FROM json_each(?));

-- name: prune_payload_refs
-- The references of pruned executions (a JSON array of ids): the hashes they held.
DELETE FROM payload_refs WHERE execution_id IN (SELECT value FROM json_each(?))
RETURNING hash;

-- name: prune_payloads
-- Of the hashes in the JSON array, the payloads no execution refers to any more.
DELETE FROM payloads
WHERE hash IN (SELECT value FROM json_each(?))
  AND NOT EXISTS (SELECT 1 FROM payload_refs r WHERE r.hash = payloads.hash);
