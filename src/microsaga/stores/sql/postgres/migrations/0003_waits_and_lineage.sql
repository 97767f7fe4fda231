-- Lineage of executions (sub-workflows, redrives), a note saying why an execution waits
-- for a worker, how many times workers died running it, and signals.
ALTER TABLE microsaga_executions ADD COLUMN parent_id text;
ALTER TABLE microsaga_executions ADD COLUMN redrive_of text;
ALTER TABLE microsaga_executions ADD COLUMN note text;
ALTER TABLE microsaga_executions ADD COLUMN recovery_attempts integer NOT NULL DEFAULT 0;

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
