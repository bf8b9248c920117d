"""The models the simulator knows, the fields each takes, and what its records look like.

With ``--strict`` the simulator refuses, as the real provider does (body code 422), a model it does not know and
any request or ``input`` field the model does not take. Without it, any model name and any field go (the
simulator of the first release). The catalogue is creditq's bundled price list, in the provider's own names:

- jobs API (``input`` fields besides ``prompt``): ``google/nano-banana`` (``output_format``, ``image_size``),
  ``bytedance/seedream-v4-text-to-image`` (``image_size``, ``image_resolution``, ``max_images``, ``seed``),
  ``kling/v2-1-standard`` (``image_url``, ``duration``, ``negative_prompt``, ``cfg_scale``);
- Veo (request fields): ``veo3``, ``veo3_fast``, ``veo3_lite`` with ``prompt``, ``model``, ``aspect_ratio``,
  ``resolution``, ``imageUrls``, ``seeds``, ``watermark``, ``callBackUrl``;
- Suno (request fields): ``V4``, ``V4_5``, ``V4_5PLUS``, ``V5`` with ``prompt``, ``model``, ``customMode``,
  ``instrumental``, ``style``, ``title``, ``callBackUrl`` (required).

Shapes as the real records have them: ``progress`` is reported by the video jobs models only (and by models the
catalogue does not know, as before); ``param.input`` is itself a JSON string for the seedream and kling models.
"""

from __future__ import annotations

from typing import Any

JOBS_INPUTS: dict[str, frozenset[str]] = {
    "google/nano-banana": frozenset({"prompt", "output_format", "image_size"}),
    "bytedance/seedream-v4-text-to-image": frozenset(
        {"prompt", "image_size", "image_resolution", "max_images", "seed"}
    ),
    "kling/v2-1-standard": frozenset({"prompt", "image_url", "duration", "negative_prompt", "cfg_scale"}),
}
JOBS_FIELDS = frozenset({"model", "input", "callBackUrl"})
VEO_MODELS = frozenset({"veo3", "veo3_fast", "veo3_lite"})
VEO_FIELDS = frozenset(
    {"prompt", "model", "aspect_ratio", "resolution", "imageUrls", "seeds", "watermark", "callBackUrl"}
)
SUNO_MODELS = frozenset({"V4", "V4_5", "V4_5PLUS", "V5"})
SUNO_FIELDS = frozenset({"prompt", "model", "customMode", "instrumental", "style", "title", "callBackUrl"})

# Jobs models whose record carries no progress figure (most image models do not report one).
NO_PROGRESS = frozenset({"google/nano-banana", "bytedance/seedream-v4-text-to-image"})
# Jobs models whose echoed ``param`` holds ``input`` as a JSON string rather than an object.
STRING_INPUT = frozenset({"bytedance/seedream-v4-text-to-image", "kling/v2-1-standard"})


def strict_refusal(family: str, model: str, body: dict[str, Any]) -> str | None:
    """Why the strict provider refuses this create (a message for body code 422), or None when it takes it."""
    if family == "jobs":
        allowed = JOBS_INPUTS.get(model)
        if allowed is None:
            return f"The model {model!r} is not supported."
        extra = sorted(set(body) - JOBS_FIELDS)
        if extra:
            return f"Unknown request field(s): {', '.join(extra)}."
        payload = body.get("input")
        unknown = sorted(set(payload) - allowed) if isinstance(payload, dict) else []
        if unknown:
            return f"Unknown input field(s) for {model}: {', '.join(unknown)}."
        return None
    models, fields = (VEO_MODELS, VEO_FIELDS) if family == "veo" else (SUNO_MODELS, SUNO_FIELDS)
    if model not in models:
        return f"The model {model!r} is not supported."
    extra = sorted(set(body) - fields)
    if extra:
        return f"Unknown request field(s): {', '.join(extra)}."
    return None
