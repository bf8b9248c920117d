-- The provider as it really is (families, several keys, progress).
--
-- family: any family the code has an adapter for (jobs, veo, suno, ...); the price list is checked against the
-- adapters at start, so the table only keeps the name well-formed.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_family_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_family_check CHECK (family ~ '^[a-z][a-z0-9_]{0,31}$');

-- provider_key: the public id (16 hex of its SHA-256, never the key) of the provider key that created, or is
-- creating, the task's provider task; its status queries use the same key. NULL for tasks from before.
ALTER TABLE tasks ADD COLUMN provider_key text;

-- progress: 0-100 as the provider last reported it, for models that report it; NULL when never reported.
ALTER TABLE tasks ADD COLUMN progress smallint CHECK (progress BETWEEN 0 AND 100);

-- query_errors: status queries in a row that the provider did not answer with a record (401, 404, "recordInfo
-- is null", rate limits, 5xx...): the backoff grows with it; a good answer resets it.
ALTER TABLE tasks ADD COLUMN query_errors int NOT NULL DEFAULT 0;
