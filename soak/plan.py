"""The schedule of a soak run, drawn from its seed: what each client does when, and which fault strikes when.

A pure function of (seed, duration, shape): the same seed gives the same schedule, event for event, so a failing
run can be run again (``--seed``) or replayed from its log (``--replay``, which reads the schedule back instead of
drawing it, so that a later change to this module cannot change an old log's meaning). The processes are real,
so the interleaving of their steps differs between two runs; the operations, their arguments, their times and
the faults do not.

Events are dicts (they go to the log as they are): ``{"t": seconds from start, "kind": "op"|"fault", ...}``.
"""

from __future__ import annotations

import random
from typing import Any

from soak.world import Shape

# The models the load uses, with their share of submits. Costs and kinds come from the price list at run time.
MODELS = (
    ("google/nano-banana", 50),
    ("bytedance/seedream-v4-text-to-image", 20),
    ("veo3_fast", 15),
    ("kling/v2-1-standard", 15),
)
KIND_OF = {
    "google/nano-banana": "image",
    "bytedance/seedream-v4-text-to-image": "image",
    "veo3_fast": "video",
    "kling/v2-1-standard": "video",
}
ACCOUNTS = 5
OPS_PER_SECOND = 3.0

OP_WEIGHTS = (
    ("submit", 34),  # with an Idempotency-Key
    ("submit_nokey", 20),
    ("repeat", 6),  # the same key and body as an earlier submit: the same task again
    ("conflict", 2),  # the same key, another body: 409
    ("cancel", 8),
    ("transfer", 8),
    ("transfer_repeat", 2),
    ("grant", 5),
    ("purchase", 4),
    ("purchase_duplicate", 3),
    ("refund", 3),  # charge.refunded of an earlier purchase: half or all of it (cumulative amount_refunded)
    ("refund_duplicate", 1),
    ("read", 8),
)

# Faults: (kind, weight). Each kind strikes once, in a seeded order, before they are drawn by weight, so that even
# a short run meets every kind.
FAULT_WEIGHTS = (
    ("kill_worker", 25),
    ("kill_api", 15),
    ("kill_workers", 5),
    ("flushall", 10),
    ("redis_restart", 10),
    ("pg_stop", 10),
    ("provider_out", 10),
)
FAULT_GAP = (3.0, 10.0)  # seconds between the end of one fault and the start of the next
SHORT_RUN = 120.0  # a run shorter than this (CI's) has its faults closer together, so that it meets them all
SHORT_FAULT_GAP = (1.0, 3.0)
WARMUP = 3.0


def _weighted(rnd: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    names = [n for n, _ in table]
    weights = [w for _, w in table]
    return rnd.choices(names, weights)[0]


def directives(rnd: random.Random, kind: str, deadline: float) -> tuple[str, dict[str, Any]]:
    """The ``[sim:...]`` directives of one submit and what they ask the provider to do (for the log)."""
    roll = rnd.random()
    seconds = rnd.uniform(2.0, deadline * 0.6) if kind == "video" else rnd.uniform(0.3, deadline * 0.4)
    parts: list[str] = []
    what: dict[str, Any] = {}
    if roll < 0.08:
        seconds = deadline + rnd.uniform(3.0, 15.0)  # the provider finishes after the deadline
        what["late"] = True
    elif roll < 0.18:
        code = rnd.choice(["500", "422", "501", "400"])
        parts.append(f"[sim:fail={code}]")
        what["fail"] = code
    elif roll < 0.22:
        parts.append("[sim:create=500]")  # every create answers 500: retried until the deadline
        what["create"] = 500
    elif roll < 0.26:
        refusal = rnd.choice([400, 422])
        parts.append(f"[sim:create={refusal}]")  # refused at once
        what["create"] = refusal
    parts.insert(0, f"[sim:seconds={seconds:.2f}]")
    what["seconds"] = round(seconds, 2)
    # Status-query and callback faults, on top. A simulator that does not know a directive ignores it (the last
    # three came with the provider's second release), so the schedule does not depend on the simulator's version.
    for directive, share in (
        ("[sim:flaky]", 0.10),
        ("[sim:nocallback]", 0.15),
        ("[sim:garbage]", 0.04),
        ("[sim:hang=6]", 0.03),
        ("[sim:query=503]", 0.03),
        ("[sim:query=429]", 0.02),
        ("[sim:state=QUEUING]", 0.03),
        ("[sim:null=2]", 0.06),  # the first status queries answer "recordInfo is null"
        ("[sim:querybody=500]", 0.04),  # every second query: HTTP 200 with body code 500
        ("[sim:callbacks=3]", 0.10),  # the completion callback delivered three times
    ):
        if rnd.random() < share:
            parts.append(directive)
            what.setdefault("faults", []).append(directive)
    return " ".join(parts), what


def make_plan(seed: int, duration: float, shape: Shape) -> list[dict[str, Any]]:
    """The schedule of a run of ``duration`` seconds: operations and faults, sorted by time."""
    rnd = random.Random(seed)
    events: list[dict[str, Any]] = []
    # The accounts, made before the load starts.
    for a in range(ACCOUNTS):
        events.append({"t": 0.0, "kind": "op", "id": a, "op": "account", "credits": rnd.randrange(300, 1500, 10)})
    next_id = ACCOUNTS
    submits: list[int] = []
    keyed: list[int] = []
    transfers: list[int] = []
    purchases: list[int] = []
    refunds: list[int] = []
    t = WARMUP / 2
    while True:
        t += rnd.expovariate(OPS_PER_SECOND)
        if t >= duration:
            break
        op = _weighted(rnd, OP_WEIGHTS)
        oid = next_id
        next_id += 1
        api = rnd.randrange(shape.apis)
        ev: dict[str, Any] = {"t": round(t, 3), "kind": "op", "id": oid, "api": api}
        account = rnd.randrange(ACCOUNTS)
        if op in ("repeat", "conflict", "cancel") and not (keyed if op != "cancel" else submits):
            op = "submit"
        if op == "transfer_repeat" and not transfers:
            op = "transfer"
        if op in ("purchase_duplicate", "refund") and not purchases:
            op = "purchase"
        if op == "refund_duplicate" and not refunds:
            op = "refund" if purchases else "purchase"
        if op in ("submit", "submit_nokey"):
            model = _weighted(rnd, MODELS)
            kind = KIND_OF[model]
            text, what = directives(rnd, kind, shape.deadline(kind))
            ev.update(op="submit", account=account, model=model, prompt=f"soak#{oid} {text}", sim=what)
            ev["key"] = f"sub-{seed}-{oid}" if op == "submit" else None
            submits.append(oid)
            if op == "submit":
                keyed.append(oid)
        elif op in ("repeat", "conflict"):
            ev.update(op=op, of=rnd.choice(keyed[-40:]))
        elif op == "cancel":
            # Mostly a recent submit (it may still be queued), sometimes an old one (409 not_cancelable).
            pool = submits[-5:] if rnd.random() < 0.8 else submits
            ev.update(op="cancel", of=rnd.choice(pool))
        elif op == "transfer":
            to = rnd.choice([b for b in range(ACCOUNTS) if b != account])
            ev.update(op="transfer", account=account, to=to, amount=rnd.randint(1, 60), key=f"tr-{seed}-{oid}")
            transfers.append(oid)
        elif op == "transfer_repeat":
            ev.update(op="transfer_repeat", of=rnd.choice(transfers[-20:]))
        elif op == "grant":
            amount = rnd.randint(20, 300) if rnd.random() < 0.8 else -rnd.randint(1, 30)
            ev.update(op="grant", account=account, amount=amount, key=f"gr-{seed}-{oid}")
        elif op == "purchase":
            ev.update(
                op="purchase",
                account=account,
                credits=rnd.randrange(50, 500, 10),
                event=f"evt_soak_{seed}_{oid}",
                payment_intent=f"pi_soak_{seed}_{oid}",
            )
            purchases.append(oid)
        elif op == "purchase_duplicate":
            ev.update(op="purchase_duplicate", of=rnd.choice(purchases[-20:]))
        elif op == "refund":
            ev.update(op="refund", of=rnd.choice(purchases[-20:]), share=rnd.choice(["half", "full"]))
            ev["event"] = f"evt_soak_{seed}_{oid}"
            refunds.append(oid)
        elif op == "refund_duplicate":
            ev.update(op="refund_duplicate", of=rnd.choice(refunds[-20:]))
        else:
            ev.update(op="read", account=account, of=rnd.choice(submits) if submits else None)
        events.append(ev)
    # The faults have a generator of their own: a change to the load's draws leaves a seed's faults as they were.
    events.extend(_faults(random.Random(seed * 1_000_003 + 7), duration, shape))
    events.sort(key=lambda e: (e["t"], 0 if e["kind"] == "op" else 1, e.get("id", 0)))
    return events


def _faults(rnd: random.Random, duration: float, shape: Shape) -> list[dict[str, Any]]:
    order = [k for k, _ in FAULT_WEIGHTS]
    rnd.shuffle(order)
    out: list[dict[str, Any]] = []
    t = WARMUP
    n = 0
    misses = 0
    while misses < 10:
        kind = order[n] if n < len(order) else _weighted(rnd, FAULT_WEIGHTS)
        n += 1
        ev: dict[str, Any] = {"t": round(t, 3), "kind": "fault", "fault": kind}
        if kind == "kill_worker":
            ev.update(index=rnd.randrange(shape.workers), down=round(rnd.uniform(0.0, 3.0), 2))
        elif kind == "kill_api":
            ev.update(index=rnd.randrange(shape.apis), down=round(rnd.uniform(0.5, 3.0), 2))
        elif kind == "kill_workers":
            ev.update(down=round(rnd.uniform(1.0, 4.0), 2))
        elif kind == "flushall":
            ev.update(down=0.0)
        elif kind == "redis_restart":
            ev.update(down=round(rnd.uniform(1.0, 5.0), 2))
        elif kind == "pg_stop" or kind == "provider_out":
            ev.update(down=round(rnd.uniform(5.0, 20.0), 2))
        if t + float(ev["down"]) > duration:
            misses += 1  # too long for what is left of the run: another kind may fit
            continue
        out.append(ev)
        t += float(ev["down"]) + rnd.uniform(*(FAULT_GAP if duration >= SHORT_RUN else SHORT_FAULT_GAP))
    return out
