-- The locsvc instances serving this cluster: each registers at start,
-- heartbeats every locdb poll and deletes its row on a graceful shutdown.
-- Times are ms since the Unix epoch on the instance's clock. `newest_peer_ms`
-- is the newest `started_ms` the instance saw in its last read of this table
-- (a starting instance waits until every live peer has seen it); `epoch` and
-- `phase` are the layout the instance serves (docs/layout-changes.md).
CREATE TABLE IF NOT EXISTS locsvc_instances (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL DEFAULT '',
    started_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL,
    newest_peer_ms BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0,
    phase INT NOT NULL DEFAULT 0
);
