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

-- Group commit across accounts: the concurrent submits of ONE API process, whatever their accounts, in one
-- statement and one commit. p_batches: [{"account": id, "tasks": [<cq_submit_batch's elements>]}, ...], one
-- element per account. Each account's requests go through cq_submit_batch (its newest definition: this function
-- does not replace it, so the pricing stream's task columns stay its own), so each request's outcome is exactly
-- what a statement of its own account alone would give. The accounts are locked first, all of them, in id order:
-- two such statements (two API processes) sharing accounts wait for each other and never deadlock. An account
-- that does not exist or is suspended answers 'no_account' / 'suspended' for each of its requests instead of
-- failing the statement: the other accounts' requests are not its business.
CREATE OR REPLACE FUNCTION cq_submit_multi(p_batches jsonb)
RETURNS TABLE (grp int, idx int, outcome text, available bigint, task tasks)
LANGUAGE plpgsql AS $$
DECLARE
    b jsonb;
    g int := 0;
    v_status text;
BEGIN
    PERFORM 1 FROM accounts
     WHERE id IN (SELECT e.value->>'account' FROM jsonb_array_elements(p_batches) e)
     ORDER BY id FOR UPDATE;
    FOR b IN SELECT e.value FROM jsonb_array_elements(p_batches) e LOOP
        grp := g;
        g := g + 1;
        SELECT a.status INTO v_status FROM accounts a WHERE a.id = b->>'account';
        IF v_status IS NULL OR v_status <> 'active' THEN
            outcome := CASE WHEN v_status IS NULL THEN 'no_account' ELSE 'suspended' END;
            available := NULL;
            task := NULL;
            FOR i IN 0 .. jsonb_array_length(b->'tasks') - 1 LOOP
                idx := i;
                RETURN NEXT;
            END LOOP;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT g - 1, s.idx, s.outcome, s.available, s.task
                       FROM cq_submit_batch(b->>'account', b->'tasks') s;
    END LOOP;
END $$;
