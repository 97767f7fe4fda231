-- Bodies larger than 32 KiB, stored once under their SHA-256 (microsaga/payloads.py):
-- step and execution rows hold a reference. payload_refs says which executions refer
-- to which payloads, so that pruning executions removes the payloads left unreferred.
CREATE TABLE payloads (
    hash  TEXT PRIMARY KEY,
    body  BLOB NOT NULL
);

CREATE TABLE payload_refs (
    execution_id  TEXT NOT NULL,
    hash          TEXT NOT NULL,
    PRIMARY KEY (execution_id, hash)
) WITHOUT ROWID;

CREATE INDEX payload_refs_by_hash ON payload_refs (hash);
