-- The redrives of an execution (list_executions(redrive_of=...)): few executions are
-- redrives, so the index holds those only.
CREATE INDEX microsaga_executions_by_redrive ON microsaga_executions (redrive_of, seq)
    WHERE redrive_of IS NOT NULL;
