-- Servers used to poll config_epoch every 10 ms (a hundred queries a second per replica). Now
-- the trigger also notifies them; they read the counter when told, and once a second anyway.
CREATE OR REPLACE FUNCTION flowgate_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE config_epoch SET epoch = epoch + 1;
    PERFORM pg_notify('flowgate_config', '');
    RETURN NULL;
END
$$;
