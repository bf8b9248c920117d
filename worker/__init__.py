"""The worker: arq processes that carry tasks from ``queued`` to a settled end, one short step at a time.

``main`` runs a worker (``creditq worker``), ``settings`` is its arq configuration, ``jobs`` the step,
``schedule`` when to look next, ``sweeper`` the periodic re-check of Postgres (and the credit poll that closes the
out-of-credits circuit), ``runtime`` what a process holds. How a task ends is ``shared.settlement``, shared with the
audit's repairs (``shared.repairs``).
"""
