-- The redrives of an execution (list_executions(redrive_of=...)): few executions are
-- redrives, so the index holds those only.
CREATE INDEX executions_by_redrive ON executions (redrive_of, seq)
    WHERE redrive_of IS NOT NULL;
