-- The row Kamailio's usrloc checks at start-up (`version`: the location
-- table at version 9), so a Kamailio node can use a database locsvc made
-- (usrloc db_mode 3 on a `single` table, or a member shared with p_usrloc).
-- kamctl's `version` table is created only when missing; an existing row for
-- the table is never overwritten.
CREATE TABLE IF NOT EXISTS version (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
) ENGINE=InnoDB;
INSERT IGNORE INTO version (table_name, table_version) VALUES ('version', 1), ('{table}', 9);
