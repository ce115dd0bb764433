-- One row the health check rewrites while a write has been refused for a full disk: its commit
-- shows that writes go through again, without waiting for a caller's write to find out.
CREATE TABLE write_probe (
    id          BIGINT  PRIMARY KEY,
    probe_time  BIGINT  NOT NULL
);
