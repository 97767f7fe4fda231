-- Whether the last transition found the status its worker expected. Every SET of an
-- UPDATE reads the row before it, and RETURNING shows the row after: this column
-- carries the "before" comparison out of the statement.
ALTER TABLE executions ADD COLUMN applied INTEGER NOT NULL DEFAULT 0;
