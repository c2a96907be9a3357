-- Layout changes (docs/layout-changes.md). `locdb.leaving` = 1 on every
-- member row of a group drains it: its subscribers move to the other groups,
-- then its rows can be deleted. Nullable and unknown to p_usrloc, which
-- selects its columns by name.
ALTER TABLE locdb ADD COLUMN leaving SMALLINT NULL;
-- One row per layout epoch: the groups that own AoRs (`owners`, ids in
-- ascending order, comma-separated), the hash, and the phase every instance
-- serves (0 announced, 1 moving, 2 done); `moving_acked` once every live
-- instance served phase 1. (The mover is the live instance with the
-- smallest id: no lease to keep.)
CREATE TABLE IF NOT EXISTS locsvc_layout (
    epoch BIGINT NOT NULL PRIMARY KEY,
    owners VARCHAR(1024) NOT NULL,
    hash_mode VARCHAR(16) NOT NULL,
    phase INT NOT NULL DEFAULT 0,
    moving_acked INT NOT NULL DEFAULT 0,
    started_ms BIGINT NOT NULL,
    changed_ms BIGINT NOT NULL
);
