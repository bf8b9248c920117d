-- The tasks_events trigger (008) ran its plpgsql function on every update of a task, poll bookkeeping
-- included (next check, query errors, the poll count). It acts only on a change of status (the outbox, the
-- status stream) or of progress (the stream), so let Postgres test that before calling it.
DROP TRIGGER tasks_events ON tasks;
CREATE TRIGGER tasks_events AFTER UPDATE ON tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION cq_task_events();
