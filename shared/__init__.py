"""What the API, the worker and the CLI share: configuration, the database, the ledger, pricing,
limits, the provider client, how a task ends (``settlement``), the audit's repairs and logging.

Nothing here imports ``api``, ``worker``, ``sim`` or ``creditq`` (``lint-imports`` checks it)."""
