-- The row Kamailio's usrloc checks at start-up (`version`: the location
-- table at version 9), so a Kamailio node can use a database locsvc made
-- (usrloc db_mode 3 on a `single` table, or a member shared with p_usrloc).
-- kamctl's `version` table is created only when missing; an existing row for
-- the table is never overwritten.
CREATE TABLE IF NOT EXISTS version (
    id SERIAL PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name)
);
INSERT INTO version (table_name, table_version) VALUES ('version', 1), ('{table}', 9)
    ON CONFLICT (table_name) DO NOTHING;
