"""The generic jobs API (most image, video and audio models): ``POST /api/v1/jobs/createTask``,
``GET /api/v1/jobs/recordInfo``.

Create: ``{"model", "input": {...}, "callBackUrl"?}``. The model's ``input`` is the client's validated input (the
price list says which fields each model takes), less the fields that steer the request. Record: ``state`` in
``waiting``/``queuing``/``generating``/``success``/``fail``; ``resultJson`` a JSON string (or an object)
``{"resultUrls": [...]}`` on success only; ``failCode``/``failMsg``/``costTime``/``completeTime`` ``""`` or null
while waiting; ``param`` a JSON string whose ``input`` may itself be a JSON string; ``progress`` on some models;
``creditsConsumed`` what was billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ProviderTransient
from shared.families.base import (
    STEERING_FIELDS,
    CreateRequest,
    Family,
    ProviderStatus,
    State,
    json_value,
    number_of,
    param_of,
    progress_of,
    text_of,
    urls_of,
)

if TYPE_CHECKING:
    from shared.pricing import Model

_STATES: dict[str, State] = {
    "waiting": "pending",
    "queuing": "pending",
    "generating": "pending",
    "success": "succeeded",
    "fail": "failed",
}


class JobsFamily(Family):
    """The jobs API adapter."""

    name = "jobs"
    create_path = "/api/v1/jobs/createTask"
    status_path = "/api/v1/jobs/recordInfo"

    def create_request(self, model: Model, input: Mapping[str, Any], callback_url: str | None) -> CreateRequest:
        """``{"model": <provider model>, "input": <input less steering fields>, "callBackUrl"?}``. Pure."""
        body: dict[str, Any] = {
            "model": model.provider_model,
            "input": {k: v for k, v in input.items() if k not in STEERING_FIELDS},
        }
        if callback_url:
            body["callBackUrl"] = callback_url
        return CreateRequest(self.create_path, body)

    def read_record(self, data: Any) -> ProviderStatus:
        """``recordInfo``'s ``data``. Raises ProviderTransient (no record, unknown state, bad ``resultJson``)."""
        if not isinstance(data, dict):
            raise ProviderTransient(f"{self.status_path} answered without a record", provider_code=200)
        state = _STATES.get(str(data.get("state", "")))
        if state is None:
            raise ProviderTransient(f"recordInfo: unknown state {data.get('state')!r}", provider_code=200)
        urls = urls_of(json_value(data.get("resultJson"))) if state == "succeeded" else ()
        credits = number_of(data.get("creditsConsumed", data.get("consumeCredits")))
        return ProviderStatus(
            state=state,
            urls=urls,
            fail_code=text_of(data.get("failCode")) if state == "failed" else None,
            fail_message=text_of(data.get("failMsg")) if state == "failed" else None,
            progress=progress_of(data.get("progress")),
            credits_consumed=credits,
            param=param_of(data.get("param")),
        )

    def echoed_prompt(self, param: Mapping[str, Any]) -> Any:
        """``param.input.prompt`` (``input`` decoded by :func:`~shared.families.base.param_of`)."""
        inner = param.get("input")
        return inner.get("prompt") if isinstance(inner, dict) else None


FAMILY = JobsFamily()
