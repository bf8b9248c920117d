"""A seeded chaos soak of creditq (``make soak``, ``python -m soak``), in the manner of TigerBeetle's VOPR and
Jepsen's checkers: real processes against a throwaway Postgres and Redis, a mixed client load and faults drawn
from a seed, then a check of every promise from what the clients were told and what the provider did. See
docs/SOAK.md."""
