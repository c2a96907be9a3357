-- Cluster layout, compatible with Kamailio p_usrloc's locdb (same columns and
-- status codes: 0 = off, 1 = on, 2 = maintenance). `failover` is UTC.
CREATE TABLE IF NOT EXISTS locdb (
    id INTEGER NOT NULL DEFAULT 0,
    no INTEGER NOT NULL DEFAULT 0,
    url VARCHAR(255) NOT NULL DEFAULT '',
    status SMALLINT NOT NULL DEFAULT 1,
    errors INTEGER NOT NULL DEFAULT 0,
    failover TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT '1900-01-01 00:00:01',
    spare SMALLINT NOT NULL DEFAULT 0,
    rg INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id, no)
);
CREATE INDEX IF NOT EXISTS locdb_no_idx ON locdb (no);
