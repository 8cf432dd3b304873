-- Servers cache API keys and app rows. Every change to either bumps this counter, which each
-- server polls, so a change made by the CLI or another replica is seen at once. Triggers,
-- not application code, so that no writer can forget it.
CREATE TABLE config_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO config_epoch (id, epoch) VALUES (1, 0);
CREATE FUNCTION flowgate_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE config_epoch SET epoch = epoch + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER apps_changed AFTER UPDATE OR DELETE ON apps FOR EACH STATEMENT EXECUTE FUNCTION flowgate_config_changed();
CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION flowgate_config_changed();
