"""Suno (music): ``POST /api/v1/generate``, ``GET /api/v1/generate/record-info``.

Create: ``{"prompt", "model" (e.g. ``V4_5``), "customMode", "instrumental", "style"?, "title"?, "callBackUrl"}``
from the client's ``input`` (``prompt``, ``custom_mode``, ``instrumental``, ``style``, ``title``). Suno requires
``callBackUrl``: without ``CREDITQ_PUBLIC_URL`` the request names :data:`NO_CALLBACK_URL`, an address under the
reserved ``.invalid`` domain that can never be reached, and creditq relies on polling.

Record: ``status`` ``PENDING``, ``TEXT_SUCCESS``, ``FIRST_SUCCESS`` (on the way), ``SUCCESS`` (done), or a
failure (``CREATE_TASK_FAILED``, ``GENERATE_AUDIO_FAILED``, ``CALLBACK_EXCEPTION``, ``SENSITIVE_WORD_ERROR``);
the audio files in ``response.sunoData[].audioUrl``. Callbacks come in stages, snake_case:
``{"code", "data": {"callbackType": "text"|"first"|"complete"|"error", "task_id", "data": [...]}}``; only
``complete`` and ``error`` say the task ended, the others are hints of progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ProviderTransient
from shared.families.base import (
    CallbackHint,
    CreateRequest,
    ErrorClass,
    Family,
    ProviderStatus,
    State,
    json_value,
    number_of,
    optional,
    param_of,
    task_id_of,
    text_of,
)

if TYPE_CHECKING:
    from shared.pricing import Model

# Reserved by RFC 2606: resolves nowhere, so the provider's deliveries fail and nothing else is ever called.
NO_CALLBACK_URL = "https://callbacks.invalid/creditq/polling-only"

_STATUSES: dict[str, State] = {
    "PENDING": "pending",
    "TEXT_SUCCESS": "pending",
    "FIRST_SUCCESS": "pending",
    "SUCCESS": "succeeded",
    "CREATE_TASK_FAILED": "failed",
    "GENERATE_AUDIO_FAILED": "failed",
    "CALLBACK_EXCEPTION": "failed",
    "SENSITIVE_WORD_ERROR": "failed",
}
_FINAL_STAGES = ("complete", "error")


class SunoFamily(Family):
    """The Suno adapter."""

    name = "suno"
    create_path = "/api/v1/generate"
    status_path = "/api/v1/generate/record-info"

    def create_request(self, model: Model, input: Mapping[str, Any], callback_url: str | None) -> CreateRequest:
        """The Suno body from the input's own fields only (the module docstring), always with a callback URL."""
        body: dict[str, Any] = {
            "prompt": input.get("prompt"),
            "model": model.provider_model,
            "customMode": bool(input.get("custom_mode", False)),
            "instrumental": bool(input.get("instrumental", False)),
        }
        optional(body, "style", input.get("style"))
        optional(body, "title", input.get("title"))
        body["callBackUrl"] = callback_url or NO_CALLBACK_URL
        return CreateRequest(self.create_path, body)

    def read_record(self, data: Any) -> ProviderStatus:
        """``record-info``'s ``data``. Raises ProviderTransient (no record, unknown status)."""
        if not isinstance(data, dict):
            raise ProviderTransient(f"{self.status_path} answered without a record", provider_code=200)
        status = str(data.get("status", ""))
        state = _STATUSES.get(status)
        if state is None:
            raise ProviderTransient(f"record-info: unknown status {data.get('status')!r}", provider_code=200)
        urls = _audio_urls(json_value(data.get("response"))) if state == "succeeded" else ()
        return ProviderStatus(
            state=state,
            urls=urls,
            fail_code=(text_of(data.get("errorCode")) or status) if state == "failed" else None,
            fail_message=text_of(data.get("errorMessage")) if state == "failed" else None,
            credits_consumed=number_of(data.get("creditsConsumed")),
            param=param_of(data.get("param")),
        )

    def read_callback(self, body: Any) -> CallbackHint:
        """A staged callback: ``data.task_id`` (``taskId`` tolerated), final on ``complete`` and ``error`` (and
        on a body code other than 200, which is an error whatever the stage says)."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return CallbackHint(None)
        stage = data.get("callbackType")
        stage = stage if isinstance(stage, str) else None
        code = body.get("code") if isinstance(body, dict) else None
        final = stage is None or stage in _FINAL_STAGES or (isinstance(code, int) and code != 200)
        return CallbackHint(task_id_of(data.get("task_id", data.get("taskId"))), final=final, stage=stage)

    def classify(self, code: int, msg: str, *, create: bool) -> ErrorClass:
        """As every family, and Suno's 430 ("call frequency too high") is a rate limit: worth retrying."""
        if create and code == 430:
            return "transient"
        return super().classify(code, msg, create=create)


def _audio_urls(response: Any) -> tuple[str, ...]:
    if not isinstance(response, dict):
        return ()
    tracks = response.get("sunoData", response.get("data"))
    if not isinstance(tracks, list):
        return ()
    urls: list[str] = []
    for track in tracks:
        if not isinstance(track, dict):
            continue
        url = track.get("audioUrl") or track.get("audio_url") or track.get("sourceAudioUrl")
        if isinstance(url, str) and url:
            urls.append(url)
    return tuple(urls)


FAMILY = SunoFamily()
