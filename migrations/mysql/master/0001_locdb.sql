-- Cluster layout, compatible with Kamailio p_usrloc's p_usrloc.sql (same
-- columns, types and status codes: 0 = off, 1 = on, 2 = maintenance).
-- locsvc writes `failover` in UTC; p_usrloc writes it in local time.
CREATE TABLE IF NOT EXISTS locdb (
    id INT(11) NOT NULL DEFAULT 0,
    no INT(11) NOT NULL DEFAULT 0,
    url VARCHAR(255) NOT NULL DEFAULT '',
    status TINYINT(4) NOT NULL DEFAULT 1,
    errors INT(11) NOT NULL DEFAULT 0,
    failover DATETIME NOT NULL DEFAULT '1900-01-01 00:00:01',
    spare TINYINT(4) NOT NULL DEFAULT 0,
    rg INT(11) NOT NULL DEFAULT 0,
    PRIMARY KEY (id, no),
    KEY no (no)
) ENGINE=InnoDB;
