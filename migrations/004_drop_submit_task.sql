-- Every submit now goes through cq_submit_batch (003), a batch of one included: one way to submit.
DROP FUNCTION cq_submit_task(text, text, text, text, text, jsonb, text, text, bigint, double precision, text, text);
