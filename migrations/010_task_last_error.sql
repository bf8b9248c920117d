-- The last attempt's error on a task that waits (issue: an unreachable provider looked healthy): a create that
-- fails transiently leaves the task queued and writes why here; the API shows it as `lastError` while the task
-- is queued. Not money: no ledger function reads it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS last_error text;
