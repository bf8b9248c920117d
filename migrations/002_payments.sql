-- Payment events (Stripe-style webhooks): applying a stored event is one SQL function, so the event's status, its
-- ledger entry and (for a subscription) its period row and the account's tier change in one transaction and one
-- round trip. The event is parsed and validated in Python (shared/ledger/payments.py, which knows the price
-- list); this function only does what needs the database: find the account, take the locks, move the money.

-- Apply stored event p_event as p_kind ('purchase' | 'subscription' | 'ignore').
-- p_account_id / p_external_id name the account as the event did (either may be NULL); p_detail non-NULL means
-- Python found the event not applicable (bad metadata, unknown tier): it stays pending with that detail.
--
-- Exactly once: the event row is locked first (FOR UPDATE), so a concurrent twin waits and then finds it
-- applied (applied = false, nothing moves). Behind that lock two more guards hold even for different event ids:
-- the purchase entry's idempotency key 'evt:<id>' and the subscription_periods primary key (account, period).
-- Raises CQ404 for an event that was never stored, CQ422 for an unknown kind.
CREATE FUNCTION cq_apply_payment_event(
    p_event text, p_kind text, p_account_id text, p_external_id text, p_credits bigint, p_tier text,
    p_period_start bigint, p_reason text, p_detail text,
    OUT event payment_events, OUT applied boolean, OUT entry_id bigint, OUT credited bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_detail  text := p_detail;
    v_note    text;
    v_entry   ledger_entries;
    v_owner   text;
BEGIN
    applied := false;
    credited := 0;
    SELECT * INTO event FROM payment_events WHERE id = p_event FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment event % not found', p_event USING ERRCODE = 'CQ404';
    END IF;
    IF event.status <> 'pending' THEN
        RETURN;  -- applied or ignored before: a repeat changes nothing
    END IF;
    IF p_kind NOT IN ('purchase', 'subscription', 'ignore') THEN
        RAISE EXCEPTION 'unknown payment event kind %', p_kind USING ERRCODE = 'CQ422';
    END IF;

    IF p_kind = 'ignore' THEN
        UPDATE payment_events SET status = 'ignored', detail = p_detail, attempts = attempts + 1
         WHERE id = p_event RETURNING * INTO event;
        RETURN;
    END IF;

    -- The account even when the metadata is otherwise bad, so that the audit can name whose event is stuck.
    -- accountId may also carry an externalId (as GET /v1/admin/accounts/{id} accepts either); externalId only
    -- ever names external_id.
    IF p_account_id IS NOT NULL THEN
        SELECT id INTO v_account FROM accounts WHERE id = p_account_id;
        IF v_account IS NULL THEN
            SELECT id INTO v_account FROM accounts WHERE external_id = p_account_id;
        END IF;
    ELSIF p_external_id IS NOT NULL THEN
        SELECT id INTO v_account FROM accounts WHERE external_id = p_external_id;
    END IF;
    IF v_account IS NULL AND v_detail IS NULL THEN
        v_detail := CASE WHEN p_account_id IS NOT NULL THEN format('unknown account %s', p_account_id)
                         ELSE format('no account has externalId %s', p_external_id) END;
    END IF;
    IF v_detail IS NOT NULL THEN
        UPDATE payment_events SET detail = v_detail, account_id = v_account, attempts = attempts + 1
         WHERE id = p_event RETURNING * INTO event;
        RETURN;
    END IF;

    IF p_kind = 'purchase' THEN
        v_entry := cq_credit(v_account, 'purchase', p_credits, p_reason, 'evt:' || p_event, p_event);
        entry_id := v_entry.id;
        credited := p_credits;
    ELSE
        -- The period row before the money: a concurrent event for the same (account, period) blocks on the
        -- primary key here until this transaction ends, then finds the period taken and allocates nothing.
        INSERT INTO subscription_periods (account_id, period_start, event_id, tier, credits)
        VALUES (v_account, p_period_start, p_event, p_tier, p_credits)
        ON CONFLICT (account_id, period_start) DO NOTHING;
        IF FOUND THEN
            IF p_credits > 0 THEN  -- a free tier allocates nothing, but its period and tier still count
                v_entry := cq_credit(v_account, 'subscription', p_credits, p_reason, 'evt:' || p_event, p_event);
                entry_id := v_entry.id;
                credited := p_credits;
            END IF;
            -- Events arrive in any order: only the newest period decides the tier, so a late invoice for an
            -- old period cannot undo an upgrade or downgrade.
            UPDATE accounts SET tier = p_tier, updated_at = now()
             WHERE id = v_account
               AND NOT EXISTS (SELECT 1 FROM subscription_periods
                                WHERE account_id = v_account AND period_start > p_period_start);
        ELSE
            SELECT event_id INTO v_owner FROM subscription_periods
             WHERE account_id = v_account AND period_start = p_period_start;
            v_note := format('period %s was already allocated by event %s', p_period_start, v_owner);
        END IF;
    END IF;

    UPDATE payment_events SET status = 'applied', account_id = v_account, detail = v_note,
                              attempts = attempts + 1, applied_at = now()
     WHERE id = p_event RETURNING * INTO event;
    applied := true;
END $$;
