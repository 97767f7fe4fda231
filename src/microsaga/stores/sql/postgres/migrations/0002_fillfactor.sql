-- Room in each page for the new version of a row: a transition that changes no indexed
-- column is then a HOT update (no index entries), which matters at thousands of
-- transitions a second. Applies to pages written from now on.
ALTER TABLE microsaga_executions SET (fillfactor = 70);
ALTER TABLE microsaga_step_runs SET (fillfactor = 80);
