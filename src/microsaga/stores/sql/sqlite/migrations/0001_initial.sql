-- microsaga SQLite schema, version 1.

CREATE TABLE definitions (
    hash         TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    body         BLOB,                 -- JSON definition; NULL when it could not be saved
    step_ids     TEXT NOT NULL         -- JSON list of every step id
) WITHOUT ROWID;

CREATE TABLE workflows (
    id          TEXT NOT NULL,
    version     INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    body        BLOB NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (id, version)
) WITHOUT ROWID;

CREATE TABLE executions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    workflow_id      TEXT NOT NULL,
    version          INTEGER,
    definition       TEXT NOT NULL REFERENCES definitions (hash),
    status           INTEGER NOT NULL,
    abort            INTEGER NOT NULL DEFAULT 0,
    request_body     BLOB NOT NULL,
    request_header   BLOB,
    response_body    BLOB,
    response_header  BLOB,
    error            TEXT,
    start_step       TEXT,
    reverse          INTEGER NOT NULL DEFAULT 0,
    step_timeout     REAL,
    deadline_at      REAL,
    owner            TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_until      REAL NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);

CREATE INDEX executions_by_workflow ON executions (workflow_id, seq);
CREATE INDEX executions_by_status ON executions (status, seq);
CREATE INDEX executions_by_owner ON executions (owner) WHERE owner IS NOT NULL;
-- runnable executions (PENDING, RUNNING, COMPENSATING) by lease expiry, for claims
CREATE INDEX executions_claimable ON executions (lease_until, seq) WHERE status IN (0, 1, 6);

CREATE TABLE step_runs (
    execution_id     TEXT NOT NULL,
    step_id          TEXT NOT NULL,
    phase            INTEGER NOT NULL,   -- 0 forward, 1 compensation
    status           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    request_body     BLOB,
    request_header   BLOB,
    response_body    BLOB,
    response_header  BLOB,
    error            TEXT,
    started_at       REAL,
    finished_at      REAL,
    PRIMARY KEY (execution_id, step_id, phase)
) WITHOUT ROWID;

CREATE TABLE controls (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id  TEXT NOT NULL,
    action        TEXT NOT NULL,
    at            REAL NOT NULL
);
