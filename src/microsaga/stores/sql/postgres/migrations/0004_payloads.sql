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
