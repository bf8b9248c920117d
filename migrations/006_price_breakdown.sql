-- Prices that follow the input (pricing stream). A task keeps what it was priced with: `input` is the validated
-- input (the price list's defaults applied; what the worker sends to the provider) and `price_breakdown` the
-- credits per priced field ([{"field"?, "value"?, "credits"}], summing to `cost`). Both are written once at submit;
-- a later change of the price list never reprices a task (`cost` is what is held and captured).
-- cq_submit_batch (003) is replaced only to store the breakdown; its admission, idempotency and money are as in 003.
-- Tasks submitted before this migration have a NULL breakdown.
ALTER TABLE tasks ADD COLUMN price_breakdown jsonb
    CHECK (price_breakdown IS NULL OR jsonb_typeof(price_breakdown) = 'array');

CREATE OR REPLACE FUNCTION cq_submit_batch(p_account text, p_tasks jsonb)
RETURNS TABLE (idx int, outcome text, available bigint, task tasks)
LANGUAGE plpgsql AS $$
DECLARE
    a accounts;
    r jsonb;
    now_held bigint;
    cost bigint;
    i int := 0;
    found_task tasks;
BEGIN
    SELECT * INTO a FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % not found', p_account USING ERRCODE = 'CQ404';
    END IF;
    IF a.status <> 'active' THEN
        RAISE EXCEPTION 'account % is suspended', p_account USING ERRCODE = 'CQ403';
    END IF;
    now_held := a.held;
    FOR r IN SELECT value FROM jsonb_array_elements(p_tasks) LOOP
        idx := i;
        i := i + 1;
        task := NULL;
        IF r->>'key' IS NOT NULL THEN
            -- The account lock orders every submit of this account, so this read sees any earlier twin.
            SELECT * INTO found_task FROM tasks t WHERE t.account_id = p_account AND t.idempotency_key = r->>'key';
            IF FOUND THEN
                outcome := CASE WHEN found_task.request_hash IS NOT DISTINCT FROM r->>'hash'
                                THEN 'repeat' ELSE 'conflict' END;
                available := a.balance - now_held;
                task := found_task;
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;
        cost := (r->>'cost')::bigint;
        IF a.balance - now_held < cost THEN
            outcome := 'insufficient';
            available := a.balance - now_held;
            RETURN NEXT;
            CONTINUE;
        END IF;
        INSERT INTO tasks (id, account_id, model, kind, family, input, callback_url, callback_token, cost,
                           deadline_at, idempotency_key, request_hash, price_breakdown)
        VALUES (r->>'id', p_account, r->>'model', r->>'kind', r->>'family', r->'input', r->>'callback_url',
                r->>'token', cost, now() + make_interval(secs => (r->>'deadline')::double precision),
                r->>'key', r->>'hash', r->'breakdown')
        RETURNING * INTO task;
        now_held := now_held + cost;
        INSERT INTO holds (id, account_id, task_id, amount) VALUES (task.id, p_account, task.id, cost);
        INSERT INTO ledger_entries (account_id, kind, amount, held_delta, balance_before, balance_after, held_after,
                                    task_id, hold_id)
        VALUES (p_account, 'hold', 0, cost, a.balance, a.balance, now_held, task.id, task.id);
        outcome := 'inserted';
        available := a.balance - now_held;
        RETURN NEXT;
    END LOOP;
    IF now_held <> a.held THEN
        UPDATE accounts SET held = now_held, updated_at = now() WHERE id = p_account;
    END IF;
END $$;
