-- creditq ledger and task store. Postgres is the truth; every money operation below is one SQL function, so
-- each is one round trip and one transaction, and no row lock is ever held across a network hop.

CREATE TABLE accounts (
    id          text PRIMARY KEY,
    external_id text UNIQUE,
    tier        text NOT NULL DEFAULT 'free',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    balance     bigint NOT NULL DEFAULT 0,
    held        bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT held_within_balance CHECK (held >= 0 AND held <= balance)
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    key_hash   bytea NOT NULL UNIQUE,          -- sha256 of the key; the key itself is shown once
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE tasks (
    id                 text PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts (id),
    model              text NOT NULL,
    kind               text NOT NULL,
    family             text NOT NULL CHECK (family IN ('jobs', 'veo')),
    input              jsonb NOT NULL,
    callback_url       text,                   -- the client's own callback, if any
    callback_token     text NOT NULL,          -- secret in the provider's callback URL
    cost               bigint NOT NULL CHECK (cost > 0),
    charged            bigint NOT NULL DEFAULT 0 CHECK (charged >= 0 AND charged <= cost),
    status             text NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    idempotency_key    text,
    request_hash       text,
    provider_task_id   text,
    submit_started_at  timestamptz,            -- intent: a create call may be in flight
    submit_attempts    int NOT NULL DEFAULT 0,
    polls              int NOT NULL DEFAULT 0,
    next_check_at      timestamptz NOT NULL DEFAULT now(),
    deadline_at        timestamptz NOT NULL,
    result             jsonb,
    error_code         text,
    error_message      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    CONSTRAINT terminal_has_finish CHECK ((status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CONSTRAINT charged_only_on_success CHECK (status = 'succeeded' OR charged = 0),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX tasks_account_created ON tasks (account_id, created_at DESC, id DESC);
CREATE INDEX tasks_live ON tasks (next_check_at) WHERE status IN ('queued', 'running');
CREATE INDEX tasks_provider ON tasks (provider_task_id) WHERE provider_task_id IS NOT NULL;

CREATE TABLE holds (
    id         text PRIMARY KEY,               -- a task's hold has the task's id
    account_id text NOT NULL REFERENCES accounts (id),
    task_id    text UNIQUE REFERENCES tasks (id),
    amount     bigint NOT NULL CHECK (amount > 0),
    captured   bigint NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    status     text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'captured', 'released')),
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    CONSTRAINT settled_has_time CHECK ((status = 'held') = (settled_at IS NULL)),
    CONSTRAINT only_captures_capture CHECK (status = 'captured' OR captured = 0)
);
CREATE INDEX holds_open ON holds (account_id) WHERE status = 'held';

CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id),
    kind            text NOT NULL CHECK (kind IN ('grant', 'purchase', 'subscription', 'adjustment', 'hold',
                                                  'capture', 'release', 'transfer_in', 'transfer_out')),
    amount          bigint NOT NULL,
    held_delta      bigint NOT NULL DEFAULT 0,
    balance_before  bigint NOT NULL,
    balance_after   bigint NOT NULL,
    held_after      bigint NOT NULL,
    task_id         text,
    hold_id         text,
    transfer_id     text,
    event_id        text,
    reason          text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entry_arithmetic CHECK (balance_after = balance_before + amount),
    CONSTRAINT entry_held CHECK (held_after >= 0 AND held_after <= balance_after),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id DESC);
CREATE INDEX ledger_entries_task ON ledger_entries (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX ledger_entries_hold ON ledger_entries (hold_id) WHERE hold_id IS NOT NULL;

-- The ledger is append-only: a correction is a new entry, never an edit.
CREATE FUNCTION cq_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only' USING ERRCODE = 'CQ000';
END $$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION cq_append_only();

CREATE TABLE transfers (
    id              text PRIMARY KEY,
    from_account_id text NOT NULL REFERENCES accounts (id),
    to_account_id   text NOT NULL REFERENCES accounts (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    memo            text,
    idempotency_key text,
    request_hash    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (from_account_id <> to_account_id),
    UNIQUE (from_account_id, idempotency_key)
);

CREATE TABLE payment_events (
    id          text PRIMARY KEY,              -- the sender's event id
    type        text NOT NULL,
    payload     jsonb NOT NULL,                -- the raw event, stored before it is applied
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'ignored')),
    account_id  text,
    detail      text,                          -- why it is not applied yet
    attempts    int NOT NULL DEFAULT 1,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz
);
CREATE INDEX payment_events_pending ON payment_events (received_at) WHERE status = 'pending';

-- One subscription allocation per (account, period): a retried or second event for a period grants nothing.
CREATE TABLE subscription_periods (
    account_id   text NOT NULL REFERENCES accounts (id),
    period_start bigint NOT NULL,
    event_id     text NOT NULL,
    tier         text NOT NULL,
    credits      bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, period_start)
);

-- Errors raised by the functions below carry SQLSTATE CQxxx; shared/ledger maps them to creditq's exceptions:
-- CQ402 insufficient credits (DETAIL: required,available), CQ403 suspended, CQ404 not found,
-- CQ409 idempotency conflict, CQ422 invalid amount.

CREATE FUNCTION cq_new_id(prefix text) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT prefix || '_' || replace(gen_random_uuid()::text, '-', '')
$$;

-- Why a conditional account update found no row: raise the matching error.
CREATE FUNCTION cq_refuse(p_account text, p_required bigint, p_writes boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE a accounts;
BEGIN
    SELECT * INTO a FROM accounts WHERE id = p_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % not found', p_account USING ERRCODE = 'CQ404';
    END IF;
    IF p_writes AND a.status <> 'active' THEN
        RAISE EXCEPTION 'account % is suspended', p_account USING ERRCODE = 'CQ403';
    END IF;
    RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'CQ402',
        DETAIL = p_required::text || ',' || (a.balance - a.held)::text;
END $$;

-- Grant (amount > 0) or adjust (amount < 0, never below available) with an idempotency key.
-- A repeat of the key returns the first entry; the same key with another amount is CQ409.
CREATE FUNCTION cq_credit(p_account text, p_kind text, p_amount bigint, p_reason text, p_key text,
                          p_event text DEFAULT NULL) RETURNS ledger_entries
LANGUAGE plpgsql AS $$
DECLARE e ledger_entries; a accounts;
BEGIN
    IF p_amount = 0 THEN
        RAISE EXCEPTION 'amount must not be 0' USING ERRCODE = 'CQ422';
    END IF;
    -- Lock the account first: a concurrent call with the same key then waits here, and (read committed) sees
    -- the winner's entry below.
    PERFORM 1 FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % not found', p_account USING ERRCODE = 'CQ404';
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO e FROM ledger_entries WHERE account_id = p_account AND idempotency_key = p_key;
        IF FOUND THEN
            IF e.amount <> p_amount OR e.kind <> p_kind THEN
                RAISE EXCEPTION 'idempotency key reused with another amount' USING ERRCODE = 'CQ409';
            END IF;
            RETURN e;
        END IF;
    END IF;
    UPDATE accounts SET balance = balance + p_amount, updated_at = now()
     WHERE id = p_account AND (p_amount > 0 OR balance - held >= -p_amount)
    RETURNING * INTO a;
    IF NOT FOUND THEN
        PERFORM cq_refuse(p_account, -p_amount, false);
    END IF;
    INSERT INTO ledger_entries (account_id, kind, amount, balance_before, balance_after, held_after,
                                reason, idempotency_key, event_id)
    VALUES (p_account, p_kind, p_amount, a.balance - p_amount, a.balance, a.held, p_reason, p_key, p_event)
    RETURNING * INTO e;
    RETURN e;
END $$;

-- Freeze credits: held += amount while available lasts. One conditional UPDATE, so racing holds cannot overspend.
CREATE FUNCTION cq_hold(p_account text, p_hold text, p_task text, p_amount bigint) RETURNS ledger_entries
LANGUAGE plpgsql AS $$
DECLARE e ledger_entries; a accounts;
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'hold amount must be positive' USING ERRCODE = 'CQ422';
    END IF;
    -- The hold row first: its primary key makes a repeat (or a concurrent twin) find the existing hold.
    INSERT INTO holds (id, account_id, task_id, amount) VALUES (p_hold, p_account, p_task, p_amount)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        SELECT * INTO e FROM ledger_entries WHERE hold_id = p_hold AND kind = 'hold';
        RETURN e;
    END IF;
    UPDATE accounts SET held = held + p_amount, updated_at = now()
     WHERE id = p_account AND status = 'active' AND balance - held >= p_amount
    RETURNING * INTO a;
    IF NOT FOUND THEN
        PERFORM cq_refuse(p_account, p_amount, true);
    END IF;
    INSERT INTO ledger_entries (account_id, kind, amount, held_delta, balance_before, balance_after, held_after,
                                task_id, hold_id)
    VALUES (p_account, 'hold', 0, p_amount, a.balance, a.balance, a.held, p_task, p_hold)
    RETURNING * INTO e;
    RETURN e;
END $$;

-- Settle an open hold: capture p_capture of it (0 = release all). The rest is released in the same entry.
-- Guarded by status = 'held': a second settle changes nothing and returns the hold as it is.
CREATE FUNCTION cq_settle_hold(p_hold text, p_capture bigint) RETURNS holds
LANGUAGE plpgsql AS $$
DECLARE h holds; a accounts;
BEGIN
    UPDATE holds SET status = CASE WHEN p_capture > 0 THEN 'captured' ELSE 'released' END,
                     captured = p_capture, settled_at = now()
     WHERE id = p_hold AND status = 'held' AND p_capture >= 0 AND p_capture <= amount
    RETURNING * INTO h;
    IF NOT FOUND THEN
        SELECT * INTO h FROM holds WHERE id = p_hold;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'hold % not found', p_hold USING ERRCODE = 'CQ404';
        END IF;
        IF h.status = 'held' THEN
            RAISE EXCEPTION 'capture % outside 0..%', p_capture, h.amount USING ERRCODE = 'CQ422';
        END IF;
        RETURN h;  -- settled before: no-op, first outcome
    END IF;
    UPDATE accounts SET balance = balance - p_capture, held = held - h.amount, updated_at = now()
     WHERE id = h.account_id RETURNING * INTO a;
    INSERT INTO ledger_entries (account_id, kind, amount, held_delta, balance_before, balance_after, held_after,
                                task_id, hold_id)
    VALUES (h.account_id, CASE WHEN p_capture > 0 THEN 'capture' ELSE 'release' END, -p_capture, -h.amount,
            a.balance + p_capture, a.balance, a.held, h.task_id, h.id);
    RETURN h;
END $$;

-- Move credits between two accounts. Both rows are locked in id order, so opposite transfers never deadlock.
CREATE FUNCTION cq_transfer(p_from text, p_to text, p_amount bigint, p_memo text, p_key text, p_hash text)
RETURNS transfers LANGUAGE plpgsql AS $$
DECLARE t transfers; a accounts; b accounts; n int;
BEGIN
    IF p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = 'CQ422';
    END IF;
    IF p_from = p_to THEN
        RAISE EXCEPTION 'cannot transfer to the same account' USING ERRCODE = 'CQ422';
    END IF;
    PERFORM 1 FROM accounts WHERE id IN (p_from, p_to) ORDER BY id FOR UPDATE;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n < 2 THEN
        PERFORM cq_refuse(CASE WHEN EXISTS (SELECT 1 FROM accounts WHERE id = p_from) THEN p_to ELSE p_from END,
                          p_amount, false);
    END IF;
    -- After the locks, so that a concurrent repeat of the key waits and then finds the first transfer.
    IF p_key IS NOT NULL THEN
        SELECT * INTO t FROM transfers WHERE from_account_id = p_from AND idempotency_key = p_key;
        IF FOUND THEN
            IF t.request_hash IS DISTINCT FROM p_hash THEN
                RAISE EXCEPTION 'idempotency key reused with another request' USING ERRCODE = 'CQ409';
            END IF;
            RETURN t;
        END IF;
    END IF;
    UPDATE accounts SET balance = balance - p_amount, updated_at = now()
     WHERE id = p_from AND status = 'active' AND balance - held >= p_amount RETURNING * INTO a;
    IF NOT FOUND THEN
        PERFORM cq_refuse(p_from, p_amount, true);
    END IF;
    UPDATE accounts SET balance = balance + p_amount, updated_at = now() WHERE id = p_to RETURNING * INTO b;
    INSERT INTO transfers (id, from_account_id, to_account_id, amount, memo, idempotency_key, request_hash)
    VALUES (cq_new_id('tr'), p_from, p_to, p_amount, p_memo, p_key, p_hash) RETURNING * INTO t;
    INSERT INTO ledger_entries (account_id, kind, amount, balance_before, balance_after, held_after,
                                transfer_id, reason)
    VALUES (p_from, 'transfer_out', -p_amount, a.balance + p_amount, a.balance, a.held, t.id, p_memo),
           (p_to, 'transfer_in', p_amount, b.balance - p_amount, b.balance, b.held, t.id, p_memo);
    RETURN t;
END $$;

-- Submit a task: insert it and hold its cost in one transaction. With an idempotency key, a repeat returns the
-- first task (inserted = false); the same key with another request hash is CQ409.
CREATE FUNCTION cq_submit_task(p_account text, p_task text, p_model text, p_kind text, p_family text,
                               p_input jsonb, p_callback_url text, p_token text, p_cost bigint,
                               p_deadline_seconds double precision, p_key text, p_hash text,
                               OUT task tasks, OUT inserted boolean)
LANGUAGE plpgsql AS $$
BEGIN
    -- The (account, key) unique index makes a concurrent twin wait here and then find the first task.
    INSERT INTO tasks (id, account_id, model, kind, family, input, callback_url, callback_token, cost,
                       deadline_at, idempotency_key, request_hash)
    VALUES (p_task, p_account, p_model, p_kind, p_family, p_input, p_callback_url, p_token, p_cost,
            now() + make_interval(secs => p_deadline_seconds), p_key, p_hash)
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING * INTO task;
    IF NOT FOUND THEN
        SELECT * INTO task FROM tasks WHERE account_id = p_account AND idempotency_key = p_key;
        IF task.request_hash IS DISTINCT FROM p_hash THEN
            RAISE EXCEPTION 'idempotency key reused with another body' USING ERRCODE = 'CQ409';
        END IF;
        inserted := false;
        RETURN;
    END IF;
    PERFORM cq_hold(p_account, p_task, p_task, p_cost);
    inserted := true;
END $$;

-- End a task: terminal state + capture (succeeded) or release (failed, canceled) of its hold, in one
-- transaction. Only a live task moves (p_from lists the states it may leave); otherwise the task is returned
-- unchanged and nothing moves, so a second settle is a harmless no-op that shows the first outcome.
CREATE FUNCTION cq_finish_task(p_task text, p_status text, p_from text[], p_result jsonb, p_error_code text,
                               p_error_message text, OUT task tasks, OUT changed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks SET status = p_status,
                     charged = CASE WHEN p_status = 'succeeded' THEN cost ELSE 0 END,
                     result = p_result, error_code = p_error_code, error_message = p_error_message,
                     finished_at = now(), updated_at = now(), submit_started_at = NULL
     WHERE id = p_task AND status = ANY (p_from)
    RETURNING * INTO task;
    IF NOT FOUND THEN
        SELECT * INTO task FROM tasks WHERE id = p_task;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'task % not found', p_task USING ERRCODE = 'CQ404';
        END IF;
        changed := false;
        RETURN;
    END IF;
    PERFORM cq_settle_hold(p_task, CASE WHEN p_status = 'succeeded' THEN task.cost ELSE 0 END);
    changed := true;
END $$;

-- A client's cancel: only a queued task with no create call in flight; its hold is released. The row lock
-- orders it against the worker's claim of the same task.
CREATE FUNCTION cq_cancel_task(p_task text, p_account text, OUT task tasks, OUT changed boolean)
LANGUAGE plpgsql AS $$
DECLARE f record;
BEGIN
    PERFORM 1 FROM tasks WHERE id = p_task AND account_id = p_account AND status = 'queued'
                           AND submit_started_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO task FROM tasks WHERE id = p_task AND account_id = p_account;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'task % not found', p_task USING ERRCODE = 'CQ404';
        END IF;
        changed := false;
        RETURN;
    END IF;
    SELECT * INTO f FROM cq_finish_task(p_task, 'canceled', ARRAY['queued'], NULL, 'canceled',
                                        'canceled by the client');
    task := f.task;
    changed := f.changed;
END $$;
