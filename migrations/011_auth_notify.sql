-- The API's key cache (api/authcache.py) is kept exact by Postgres itself: whatever changes what an API key may
-- do (a key revoked or its expiry changed, an account suspended or resumed, a tier changed: by the admin
-- endpoints, a payment event's SQL function, the CLI or plain psql) notifies channel `creditq_auth` with the
-- account's id, in the same transaction, so the notification goes out exactly when the change commits (and never
-- for a change that rolled back). Each API process listens and drops that account's cached keys.
--
-- Column-list triggers: the submit path's `UPDATE accounts SET held = ...` does not name tier or status, so the
-- trigger is not even considered on the hot path.

CREATE OR REPLACE FUNCTION cq_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'accounts' THEN
        PERFORM pg_notify('creditq_auth', OLD.id);
    ELSE
        -- The old row's account: that is where the cache filed the key.
        PERFORM pg_notify('creditq_auth', OLD.account_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_auth_changed
    AFTER UPDATE OF tier, status ON accounts
    FOR EACH ROW WHEN (OLD.tier IS DISTINCT FROM NEW.tier OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION cq_auth_changed();

CREATE TRIGGER accounts_auth_deleted AFTER DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION cq_auth_changed();

CREATE TRIGGER api_keys_auth_changed
    AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
                       OR OLD.account_id IS DISTINCT FROM NEW.account_id OR OLD.key_hash IS DISTINCT FROM NEW.key_hash)
    EXECUTE FUNCTION cq_auth_changed();

CREATE TRIGGER api_keys_auth_deleted AFTER DELETE ON api_keys FOR EACH ROW EXECUTE FUNCTION cq_auth_changed();
