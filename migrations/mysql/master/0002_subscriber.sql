-- kamctl `subscriber` schema, version 7 (Kamailio auth_db), so an existing
-- Kamailio subscriber database works as locsvc's credential store. ha1 is
-- MD5(username:domain:password), ha1b MD5(username@domain:domain:password).
CREATE TABLE IF NOT EXISTS subscriber (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT account_idx UNIQUE (username, domain),
    KEY username_idx (username)
) ENGINE=InnoDB;
-- kamctl's `version` table (standard-create.sql), which Kamailio modules
-- check at start-up; created only when missing, rows never overwritten.
CREATE TABLE IF NOT EXISTS version (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
) ENGINE=InnoDB;
INSERT IGNORE INTO version (table_name, table_version) VALUES ('version', 1), ('subscriber', 7);
