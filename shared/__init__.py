"""What the API, the worker and the CLI share: configuration, the database, the ledger, pricing,
limits, the provider client and logging."""
