"""Veo 3 (video): ``POST /api/v1/veo/generate``, ``GET /api/v1/veo/record-info``.

Create: ``{"prompt", "model", "aspect_ratio", "resolution", "imageUrls"?, "seeds"?, "watermark"?,
"callBackUrl"?}``, mapped from the client's ``input`` (``prompt``, ``aspect_ratio``, ``resolution``,
``image_urls``, ``seeds``, ``watermark``); nothing else of the input reaches the request, so a client cannot
steer the model, the callback or any other field. Record: ``successFlag`` 0 generating, 1 success, 2 and 3
failed; ``response.resultUrls`` (nullable); ``errorCode`` an integer or null, ``errorMessage``; ``paramJson``
the request as a JSON string, which may lack ``model``. Not-yet-known ids answer ``record is null``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ProviderTransient
from shared.families.base import (
    CreateRequest,
    Family,
    ProviderStatus,
    State,
    json_value,
    number_of,
    optional,
    param_of,
    progress_of,
    text_of,
    urls_of,
)

if TYPE_CHECKING:
    from shared.pricing import Model

DEFAULT_ASPECT_RATIO = "16:9"
DEFAULT_RESOLUTION = "720p"
_FLAGS: dict[int, State] = {0: "pending", 1: "succeeded", 2: "failed", 3: "failed"}


class VeoFamily(Family):
    """The Veo 3 adapter."""

    name = "veo"
    create_path = "/api/v1/veo/generate"
    status_path = "/api/v1/veo/record-info"

    def create_request(self, model: Model, input: Mapping[str, Any], callback_url: str | None) -> CreateRequest:
        """The Veo body from the input's own fields only (the module docstring); defaults ``16:9``, ``720p``."""
        body: dict[str, Any] = {
            "prompt": input.get("prompt"),
            "model": model.provider_model,
            "aspect_ratio": input.get("aspect_ratio") or DEFAULT_ASPECT_RATIO,
            "resolution": input.get("resolution") or DEFAULT_RESOLUTION,
        }
        optional(body, "imageUrls", input.get("image_urls"))
        optional(body, "seeds", input.get("seeds"))
        optional(body, "watermark", input.get("watermark"))
        if callback_url:
            body["callBackUrl"] = callback_url
        return CreateRequest(self.create_path, body)

    def read_record(self, data: Any) -> ProviderStatus:
        """``record-info``'s ``data``. Raises ProviderTransient (no record, unknown ``successFlag``)."""
        if not isinstance(data, dict):
            raise ProviderTransient(f"{self.status_path} answered without a record", provider_code=200)
        flag = data.get("successFlag")
        state = _FLAGS.get(flag) if isinstance(flag, int) and not isinstance(flag, bool) else None
        if state is None:
            raise ProviderTransient(f"record-info: unknown successFlag {flag!r}", provider_code=200)
        urls: tuple[str, ...] = ()
        if state == "succeeded":
            urls = urls_of(json_value(data.get("response"))) or urls_of(json_value(data.get("info"))) or urls_of(data)
        return ProviderStatus(
            state=state,
            urls=urls,
            fail_code=text_of(data.get("errorCode")) if state == "failed" else None,
            fail_message=text_of(data.get("errorMessage")) if state == "failed" else None,
            progress=progress_of(data.get("progress")),
            credits_consumed=number_of(data.get("creditsConsumed")),
            param=param_of(data.get("paramJson", data.get("param"))),
        )


FAMILY = VeoFamily()
