-- 003: audit checkpoints members sent us to witness (connector docs/audit.md): what a
-- participant's chain held at ``seq``, and when we received it. Kept as received, never changed.
CREATE TABLE witnessed_checkpoints (
    participant  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    head         TEXT NOT NULL,
    received_at  REAL NOT NULL,
    jws          TEXT NOT NULL,
    PRIMARY KEY (participant, seq)
) WITHOUT ROWID;
