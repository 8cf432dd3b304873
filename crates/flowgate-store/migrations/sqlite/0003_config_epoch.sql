-- Servers cache API keys and app rows. Every change to either bumps this counter, which each
-- server polls, so a change made by the CLI or another replica is seen at once. Triggers,
-- not application code, so that no writer can forget it.
CREATE TABLE config_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
);
INSERT INTO config_epoch (id, epoch) VALUES (1, 0);
CREATE TRIGGER apps_updated AFTER UPDATE ON apps BEGIN UPDATE config_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER apps_deleted AFTER DELETE ON apps BEGIN UPDATE config_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER api_keys_updated AFTER UPDATE ON api_keys BEGIN UPDATE config_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys BEGIN UPDATE config_epoch SET epoch = epoch + 1; END;
