-- The microsaga PostgreSQL schema as of the latest migration, applied as one script to
-- an empty database. tests/integration/test_postgres.py checks that it equals the
-- migrations replayed in order: a new migration must change this file too.
--
-- Every table is prefixed with microsaga_ so the store can share a database with an
-- application. Times are seconds since the epoch (double precision) from the engine's
-- clock, as in the SQLite store, so leases compare the same way on both. Bodies are
-- bytea (kept byte for byte); headers are JSON objects of string lists, in json (not
-- jsonb) so their key order survives.

CREATE TABLE microsaga_definitions (
    hash         text PRIMARY KEY,
    workflow_id  text NOT NULL,
    body         bytea,                 -- JSON definition; NULL when it could not be saved
    step_ids     text[] NOT NULL
);

CREATE TABLE microsaga_workflows (
    id          text NOT NULL,
    version     integer NOT NULL,
    hash        text NOT NULL,
    body        bytea NOT NULL,
    created_at  double precision NOT NULL,
    PRIMARY KEY (id, version)
);

CREATE TABLE microsaga_executions (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text NOT NULL UNIQUE,
    workflow_id      text NOT NULL,
    version          integer,
    definition       text NOT NULL REFERENCES microsaga_definitions (hash),
    status           smallint NOT NULL,
    abort            smallint NOT NULL DEFAULT 0,
    request_body     bytea NOT NULL,
    request_header   json,
    response_body    bytea,
    response_header  json,
    error            text,
    start_step       text,
    reverse          boolean NOT NULL DEFAULT false,
    step_timeout     double precision,
    deadline_at      double precision,
    owner            text,
    lease_token      bigint NOT NULL DEFAULT 0,
    lease_until      double precision NOT NULL DEFAULT 0,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    parent_id        text,                -- the parent's id, for a sub-workflow's child
    redrive_of       text,                -- the execution this one redrives
    note             text,                -- why it waits for a worker, if it does
    recovery_attempts integer NOT NULL DEFAULT 0
) WITH (fillfactor = 70);

CREATE INDEX microsaga_executions_by_workflow ON microsaga_executions (workflow_id, seq);
CREATE INDEX microsaga_executions_by_status ON microsaga_executions (status, seq);
CREATE INDEX microsaga_executions_by_owner ON microsaga_executions (owner)
    WHERE owner IS NOT NULL;
-- the redrives of an execution: few executions are redrives
CREATE INDEX microsaga_executions_by_redrive ON microsaga_executions (redrive_of, seq)
    WHERE redrive_of IS NOT NULL;
-- runnable executions (PENDING, RUNNING, COMPENSATING) by lease expiry, for claims
CREATE INDEX microsaga_executions_claimable ON microsaga_executions (lease_until, seq)
    WHERE status IN (0, 1, 6);
CREATE TABLE microsaga_step_runs (
    execution_id     text NOT NULL,
    step_id          text NOT NULL,
    phase            smallint NOT NULL,   -- 0 forward, 1 compensation
    status           smallint NOT NULL,
    attempts         integer NOT NULL,
    request_body     bytea,
    request_header   json,
    response_body    bytea,
    response_header  json,
    error            text,
    started_at       double precision,
    finished_at      double precision,
    PRIMARY KEY (execution_id, step_id, phase)
) WITH (fillfactor = 80);

-- Control requests, read by workers in seq order. Inserts take an advisory lock
-- (see queries.sql, lock_controls) so that seq order is commit order.
CREATE TABLE microsaga_controls (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id  text NOT NULL,
    action        text NOT NULL,
    at            double precision NOT NULL
);

CREATE INDEX microsaga_controls_by_time ON microsaga_controls (at);

-- Signals delivered to executions: one per event (a second of the same event is
-- ignored); consumed once a waiting step took its payload.
CREATE TABLE microsaga_signals (
    execution_id  text NOT NULL,
    event         text NOT NULL,
    body          bytea NOT NULL,
    header        json,
    at            double precision NOT NULL,
    consumed      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (execution_id, event)
);

-- Bodies larger than 32 KiB, stored once under their SHA-256 (microsaga/payloads.py):
-- step and execution rows hold a reference. payload_refs says which executions refer
-- to which payloads, so that pruning executions removes the payloads left unreferred.
CREATE TABLE microsaga_payloads (
    hash  text PRIMARY KEY,
    body  bytea NOT NULL
);

CREATE TABLE microsaga_payload_refs (
    execution_id  text NOT NULL,
    hash          text NOT NULL,
    PRIMARY KEY (execution_id, hash)
);

CREATE INDEX microsaga_payload_refs_by_hash ON microsaga_payload_refs (hash);
