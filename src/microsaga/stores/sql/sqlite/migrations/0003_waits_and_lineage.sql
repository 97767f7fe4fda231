-- Lineage of executions (sub-workflows, redrives), a note saying why an execution waits
-- for a worker, how many times workers died running it, and signals.
ALTER TABLE executions ADD COLUMN parent_id TEXT;
ALTER TABLE executions ADD COLUMN redrive_of TEXT;
ALTER TABLE executions ADD COLUMN note TEXT;
ALTER TABLE executions ADD COLUMN recovery_attempts INTEGER NOT NULL DEFAULT 0;

-- Signals delivered to executions: one per event (a second of the same event is
-- ignored); consumed once a waiting step took its payload.
CREATE TABLE signals (
    execution_id  TEXT NOT NULL,
    event         TEXT NOT NULL,
    body          BLOB NOT NULL,
    header        BLOB,
    at            REAL NOT NULL,
    consumed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (execution_id, event)
) WITHOUT ROWID;
