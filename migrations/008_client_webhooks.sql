-- Client webhooks (Standard Webhooks) and the change feed of the status stream.
--
-- The outbox row of a job's end is written by a trigger on tasks, in the very transaction that ends the task
-- (cq_finish_task, cq_cancel_task, or whatever else ever sets a terminal status), so a crash between settling
-- and delivering loses nothing, and no function of another module had to change. Redis only schedules the
-- deliveries; a periodic sweep re-schedules any pending one that lost its queue entry.

-- One signing secret per account; a rotated one keeps signing beside the new one until expires_at.
CREATE TABLE webhook_secrets (
    id         bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    secret     text NOT NULL,                  -- whsec_<base64 of the key>
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz                     -- NULL: the current secret
);
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (account_id) WHERE expires_at IS NULL;
CREATE INDEX webhook_secrets_account ON webhook_secrets (account_id, id DESC);

CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,         -- the webhook-id header: the same for every attempt
    task_id          text NOT NULL REFERENCES tasks (id),
    account_id       text NOT NULL REFERENCES accounts (id),
    url              text NOT NULL,
    type             text NOT NULL CHECK (type IN ('job.succeeded', 'job.failed', 'job.canceled')),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    last_status_code int,
    last_error       text,
    next_attempt_at  timestamptz DEFAULT now(), -- NULL once delivered or failed
    locked_until     timestamptz,              -- an attempt in flight (a worker that died lets it lapse)
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT pending_has_next CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    UNIQUE (task_id, type)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE FUNCTION cq_task_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The outbox: a task that becomes terminal with a callback URL gets its delivery, in this transaction.
    IF NEW.status IN ('succeeded', 'failed', 'canceled') AND OLD.status NOT IN ('succeeded', 'failed', 'canceled')
       AND NEW.callback_url IS NOT NULL THEN
        INSERT INTO webhook_deliveries (id, task_id, account_id, url, type)
        VALUES (cq_new_id('msg'), NEW.id, NEW.account_id, NEW.callback_url,
                'job.' || NEW.status)
        ON CONFLICT (task_id, type) DO NOTHING;
    END IF;
    -- The status stream's wake-up: a change of status or of progress (a column that may or may not exist:
    -- read through to_jsonb so this trigger does not depend on it). Only a hint; streams read Postgres.
    IF NEW.status IS DISTINCT FROM OLD.status
       OR to_jsonb(NEW) -> 'progress' IS DISTINCT FROM to_jsonb(OLD) -> 'progress' THEN
        PERFORM pg_notify('cq_task_events', NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_events AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION cq_task_events();

-- The account's signing secrets, newest first, creating the first one (p_new) if there is none. One round trip.
CREATE FUNCTION cq_webhook_secrets(p_account text, p_new text)
RETURNS SETOF webhook_secrets LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE id = p_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account %', p_account USING ERRCODE = 'CQ404';
    END IF;
    INSERT INTO webhook_secrets (account_id, secret) VALUES (p_account, p_new)
    ON CONFLICT (account_id) WHERE expires_at IS NULL DO NOTHING;
    RETURN QUERY SELECT * FROM webhook_secrets
        WHERE account_id = p_account AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC;
END $$;

-- Rotate: the current secret keeps signing for p_grace seconds more, p_new becomes the current one.
CREATE FUNCTION cq_rotate_webhook_secret(p_account text, p_new text, p_grace double precision)
RETURNS SETOF webhook_secrets LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE id = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account %', p_account USING ERRCODE = 'CQ404';
    END IF;
    UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => p_grace)
        WHERE account_id = p_account AND expires_at IS NULL;
    INSERT INTO webhook_secrets (account_id, secret) VALUES (p_account, p_new);
    RETURN QUERY SELECT * FROM webhook_secrets
        WHERE account_id = p_account AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC;
END $$;

-- Claim a due pending delivery for one attempt (until p_lease seconds from now). NULL if it is not due, not
-- pending, or another attempt holds it.
CREATE FUNCTION cq_claim_delivery(p_id text, p_lease double precision, p_early double precision)
RETURNS webhook_deliveries LANGUAGE sql AS $$
    UPDATE webhook_deliveries
       SET locked_until = now() + make_interval(secs => p_lease), attempts = attempts + 1
     WHERE id = p_id AND status = 'pending'
       AND next_attempt_at <= now() + make_interval(secs => p_early)
       AND (locked_until IS NULL OR locked_until < now())
    RETURNING *;
$$;

-- Record an attempt's outcome: delivered, failed for good, or pending again at now() + p_retry_in seconds.
CREATE FUNCTION cq_record_delivery(p_id text, p_outcome text, p_status_code int, p_error text,
                                   p_retry_in double precision)
RETURNS webhook_deliveries LANGUAGE sql AS $$
    UPDATE webhook_deliveries
       SET status = p_outcome,
           last_status_code = p_status_code,
           last_error = p_error,
           locked_until = NULL,
           next_attempt_at = CASE WHEN p_outcome = 'pending' THEN now() + make_interval(secs => p_retry_in) END,
           delivered_at = CASE WHEN p_outcome = 'delivered' THEN now() ELSE delivered_at END
     WHERE id = p_id
    RETURNING *;
$$;

-- A client's "try again now": pending, due now, whatever its state (a delivered one is sent once more).
CREATE FUNCTION cq_retry_delivery(p_task text, p_account text, p_id text)
RETURNS webhook_deliveries LANGUAGE sql AS $$
    UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), locked_until = NULL
     WHERE id = p_id AND task_id = p_task AND account_id = p_account
    RETURNING *;
$$;
