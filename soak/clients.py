"""The clients: each planned operation sent to one of the API processes over real HTTP, retried the way a careful
client retries (same idempotency key, another API process, growing pauses), with every answer logged and kept in
the :class:`~soak.history.History`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from soak.history import History, Log, Outcome
from soak.world import ADMIN_TOKEN, PAYMENTS_SECRET, SOAK_TIER, World

REQUEST_TIMEOUT = 10.0
RETRY_BUDGET = 45.0  # seconds a keyed operation is retried before it is left "info" for the resolve phase
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Answer:
    """One HTTP exchange: ``code`` None when there was no answer (``error`` says why)."""

    def __init__(self, code: int | None, body: Any = None, error: str | None = None) -> None:
        self.code = code
        self.body = body
        self.error = error

    @property
    def definite(self) -> bool:
        """True for an answer that decides the operation (2xx or 4xx); 503, 5xx and no answer do not."""
        return self.code is not None and self.code < 500

    def error_code(self) -> str | None:
        """The ``error.code`` of an error answer."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return str(code) if code is not None else None
        return None


def sign(payload: bytes, secret: str) -> str:
    """A ``Stripe-Signature`` header for ``payload`` now (what Stripe sends; see docs/API.md of the product)."""
    ts = int(time.time())
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def purchase_event(op: dict[str, Any], account_id: str) -> bytes:
    """The body of a purchase's ``checkout.session.completed``, as Stripe shapes it."""
    event = {
        "id": op["event"],
        "object": "event",
        "type": "checkout.session.completed",
        "created": 1_700_000_000 + int(op["id"]),
        "data": {
            "object": {
                "id": f"cs_{op['event']}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "payment_intent": op["payment_intent"],
                "amount_total": int(op["credits"]) * 10,
                "currency": "usd",
                "client_reference_id": account_id,
                "metadata": {"accountId": account_id, "credits": str(op["credits"])},
            }
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def refunded_money(purchase: dict[str, Any], share: str) -> int:
    """The ``amount_refunded`` (cumulative, smallest currency unit) of a refund of ``share`` of a purchase."""
    total = int(purchase["credits"]) * 10
    return total if share == "full" else total // 2


def refund_event(op: dict[str, Any], purchase: dict[str, Any], account_id: str) -> bytes:
    """The body of a ``charge.refunded`` of ``purchase`` (its ``payment_intent``), as Stripe shapes it."""
    total = int(purchase["credits"]) * 10
    refunded = refunded_money(purchase, str(op["share"]))
    event = {
        "id": op["event"],
        "object": "event",
        "type": "charge.refunded",
        "created": 1_700_000_000 + int(op["id"]),
        "data": {
            "object": {
                "id": f"ch_{purchase['event']}",
                "object": "charge",
                "payment_intent": purchase["payment_intent"],
                "amount": total,
                "amount_captured": total,
                "amount_refunded": refunded,
                "refunded": refunded == total,
                "currency": "usd",
                "metadata": {"accountId": account_id},
            }
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


class Clients:
    """Runs planned operations against the world's API processes."""

    def __init__(self, world: World, log: Log, history: History, http: httpx.AsyncClient) -> None:
        self.world = world
        self.log = log
        self.history = history
        self.http = http
        self.done: dict[int, asyncio.Event] = {}

    # -- one exchange --

    async def send(
        self,
        oid: int,
        api: int,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        content: bytes | None = None,
    ) -> Answer:
        """One request to API process ``api``; logged; a 5xx other than 503 is kept as a bad answer."""
        proc = self.world.apis[api % len(self.world.apis)]
        started = time.monotonic()
        try:
            r = await self.http.request(
                method, proc.url + path, headers=headers, json=body, content=content, timeout=REQUEST_TIMEOUT
            )
        except (httpx.HTTPError, OSError) as e:
            answer = Answer(None, error=type(e).__name__)
        else:
            try:
                parsed: Any = r.json()
            except ValueError:
                parsed = r.text[:500]
            answer = Answer(r.status_code, parsed)
            if r.status_code >= 500 and r.status_code != 503:
                self.history.bad_answers.append(
                    {"op": oid, "method": method, "path": path, "code": r.status_code, "body": parsed}
                )
        self.log.write(
            "answer",
            op=oid,
            api=proc.name,
            method=method,
            path=path,
            code=answer.code,
            error=answer.error or answer.error_code(),
            id=_id_of(answer.body),
            took=round(time.monotonic() - started, 3),
        )
        if answer.code is not None:
            self.history.saw(answer.body)
        return answer

    async def keyed(
        self,
        out: Outcome,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        content: Any = None,
        budget: float = RETRY_BUDGET,
    ) -> Answer:
        """Send until an answer is definite or ``budget`` seconds pass, moving to the next API process and
        pausing longer after each miss. ``content`` may be a callable giving fresh bytes and headers (a payment
        event is signed anew each time)."""
        api = int(out.op.get("api", 0))
        pause = 0.3
        started = time.monotonic()
        while True:
            out.attempts += 1
            h = dict(headers)
            raw: bytes | None = None
            if callable(content):
                raw, extra = content()
                h.update(extra)
            answer = await self.send(out.id, api, method, path, h, body, raw)
            if answer.definite:
                out.answers.append({"code": answer.code, "id": _id_of(answer.body)})
                return answer
            if time.monotonic() - started + pause > budget:
                return answer
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)
            api += 1

    @staticmethod
    def decide(out: Outcome, answer: Answer) -> None:
        """Record the operation's end from its deciding answer."""
        out.code = answer.code
        out.body = answer.body
        if answer.code is None or not answer.definite:
            out.status = "info"
        elif answer.code < 300:
            out.status = "ok"
        else:
            out.status = "fail"

    # -- the operations --

    def key_of(self, account: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.history.accounts[account][1]}"}

    async def create_account(self, op: dict[str, Any]) -> None:
        """Make one account (before any fault: retried until it answers)."""
        out = self.history.outcomes.setdefault(int(op["id"]), Outcome(op))
        deadline = time.monotonic() + 60
        while True:
            answer = await self.send(
                out.id, 0, "POST", "/v1/admin/accounts", ADMIN, {"tier": SOAK_TIER, "credits": op["credits"]}
            )
            if answer.code == 201 and isinstance(answer.body, dict):
                self.history.accounts[out.id] = (str(answer.body["accountId"]), str(answer.body["apiKey"]))
                self.decide(out, answer)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not create account {out.id}: {answer.code} {answer.body}")
            await asyncio.sleep(0.5)

    async def run(self, op: dict[str, Any]) -> None:
        """Run one planned operation to its end (bounded by the retry budget)."""
        oid = int(op["id"])
        out = self.history.outcomes.setdefault(oid, Outcome(op))
        event = self.done.setdefault(oid, asyncio.Event())
        try:
            await getattr(self, "op_" + str(op["op"]))(out)
        finally:
            if out.status == "pending":
                out.status = "info"
            event.set()
            self.log.write("outcome", op=oid, kind=op["op"], status=out.status, code=out.code, id=out.result_id())

    async def _earlier(self, oid: int, wait: float = RETRY_BUDGET + REQUEST_TIMEOUT + 5) -> Outcome | None:
        """The outcome of earlier operation ``oid`` once it has ended (None if it did not end in ``wait`` s)."""
        event = self.done.setdefault(oid, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), wait)
        except TimeoutError:
            return None
        return self.history.outcomes.get(oid)

    @staticmethod
    def submit_body(op: dict[str, Any], prompt: str | None = None) -> dict[str, Any]:
        return {"model": op["model"], "input": {"prompt": prompt or op["prompt"]}}

    async def op_submit(self, out: Outcome) -> None:
        op = out.op
        headers = self.key_of(int(op["account"]))
        if op.get("key"):
            headers["Idempotency-Key"] = str(op["key"])
            answer = await self.keyed(out, "POST", "/v1/jobs", headers, self.submit_body(op))
        else:
            out.attempts = 1
            answer = await self.send(out.id, int(op["api"]), "POST", "/v1/jobs", headers, self.submit_body(op))
            if answer.definite:
                out.answers.append({"code": answer.code, "id": _id_of(answer.body)})
        self.decide(out, answer)

    async def _accepted_earlier(self, out: Outcome) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The earlier keyed operation this one repeats, with its key's headers; None (and ``out`` skipped) when
        that one was not accepted."""
        first = await self._earlier(int(out.op["of"]))
        if first is None or first.status != "ok":
            out.status = "skipped"
            return None
        op = first.op
        return op, {**self.key_of(int(op["account"])), "Idempotency-Key": str(op["key"])}

    async def op_repeat(self, out: Outcome) -> None:
        if (earlier := await self._accepted_earlier(out)) is None:
            return
        op, headers = earlier
        self.decide(out, await self.keyed(out, "POST", "/v1/jobs", headers, self.submit_body(op)))

    async def op_conflict(self, out: Outcome) -> None:
        if (earlier := await self._accepted_earlier(out)) is None:
            return
        op, headers = earlier
        body = self.submit_body(op, f"soak#{out.id} conflict of soak#{op['id']} [sim:seconds=1]")
        self.decide(out, await self.keyed(out, "POST", "/v1/jobs", headers, body))

    async def op_cancel(self, out: Outcome) -> None:
        first = await self._earlier(int(out.op["of"]))
        task_id = first.result_id() if first is not None and first.status == "ok" else None
        if first is None or task_id is None:
            out.status = "skipped"
            return
        out.op["task"] = task_id
        headers = self.key_of(int(first.op["account"]))
        self.decide(out, await self.keyed(out, "POST", f"/v1/jobs/{task_id}/cancel", headers))

    async def op_transfer(self, out: Outcome) -> None:
        op = out.op
        headers = {**self.key_of(int(op["account"])), "Idempotency-Key": str(op["key"])}
        self.decide(out, await self.keyed(out, "POST", "/v1/transfers", headers, self.transfer_body(op)))

    def transfer_body(self, op: dict[str, Any]) -> dict[str, Any]:
        return {"toAccountId": self.history.accounts[int(op["to"])][0], "amount": op["amount"], "memo": "soak"}

    async def op_transfer_repeat(self, out: Outcome) -> None:
        if (earlier := await self._accepted_earlier(out)) is None:
            return
        op, headers = earlier
        self.decide(out, await self.keyed(out, "POST", "/v1/transfers", headers, self.transfer_body(op)))

    async def op_grant(self, out: Outcome) -> None:
        op = out.op
        account_id = self.history.accounts[int(op["account"])][0]
        headers = {**ADMIN, "Idempotency-Key": str(op["key"])}
        body = {"amount": op["amount"], "reason": f"soak grant {op['id']}"}
        self.decide(out, await self.keyed(out, "POST", f"/v1/admin/accounts/{account_id}/credits", headers, body))

    async def _purchase(self, out: Outcome, op: dict[str, Any]) -> None:
        account_id = self.history.accounts[int(op["account"])][0]
        await self._signed(out, purchase_event(op, account_id))

    async def op_purchase(self, out: Outcome) -> None:
        await self._purchase(out, out.op)

    async def op_purchase_duplicate(self, out: Outcome) -> None:
        first = await self._earlier(int(out.op["of"]))
        if first is None or first.status != "ok":
            out.status = "skipped"
            return
        await self._purchase(out, first.op)

    async def _signed(self, out: Outcome, payload: bytes) -> None:
        def signed() -> tuple[bytes, dict[str, str]]:
            return payload, {"Stripe-Signature": sign(payload, PAYMENTS_SECRET), "Content-Type": "application/json"}

        self.decide(out, await self.keyed(out, "POST", "/v1/webhooks/payments", {}, content=signed))

    async def op_refund(self, out: Outcome) -> None:
        # Only a purchase that certainly applied is refunded: an earlier refund would wait, pending, for it.
        first = await self._earlier(int(out.op["of"]))
        if first is None or first.status != "ok":
            out.status = "skipped"
            return
        account_id = self.history.accounts[int(first.op["account"])][0]
        await self._signed(out, refund_event(out.op, first.op, account_id))

    async def op_refund_duplicate(self, out: Outcome) -> None:
        first = await self._earlier(int(out.op["of"]))
        if first is None or first.status != "ok":
            out.status = "skipped"
            return
        purchase = self.history.outcomes[int(first.op["of"])].op
        account_id = self.history.accounts[int(purchase["account"])][0]
        await self._signed(out, refund_event(first.op, purchase, account_id))

    async def op_read(self, out: Outcome) -> None:
        op = out.op
        headers = self.key_of(int(op["account"]))
        out.attempts = 1
        answer = await self.send(out.id, int(op["api"]), "GET", "/v1/account", headers)
        if op.get("of") is not None:
            first = self.history.outcomes.get(int(op["of"]))
            task_id = first.result_id() if first is not None and first.status == "ok" else None
            if first is not None and task_id is not None:
                owner = self.key_of(int(first.op["account"]))
                await self.send(out.id, int(op["api"]), "GET", f"/v1/jobs/{task_id}", owner)
        self.decide(out, answer)


def _id_of(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("taskId", "transferId", "eventId"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None
