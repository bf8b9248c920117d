"""The ledger: the only Python that talks money (and tasks) to Postgres.

SQL lives here and in ``migrations/``; every money operation is one call of a SQL function there, so it is one
round trip and one transaction. Modules: :mod:`.accounts` (accounts, API keys, statements), :mod:`.money`
(credit, hold, settle, transfer), :mod:`.tasks` (task store and the task transactions), :mod:`.payments`
(payment events), :mod:`.audit` (the invariants). Functions take an ``asyncpg`` connection or pool as their first
argument and raise only :mod:`shared.errors` classes for conditions a caller can act on.
"""
