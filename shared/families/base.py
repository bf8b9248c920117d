"""What every provider family adapter is: the interface the worker drives, the status type, shared readers.

A family is one way of talking to KIE.ai: its create endpoint and body, its status endpoint and record shape, its
callback shape, and which answers are worth retrying. The worker never looks inside: it asks the adapter for a
request, hands it back the record or callback it got, and acts on :class:`ProviderStatus` and the error class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from shared.errors import ProviderTransient

if TYPE_CHECKING:
    from shared.pricing import Model

State = Literal["pending", "succeeded", "failed"]
ErrorClass = Literal["transient", "permanent", "account"]

# Fields of a client's ``input`` that steer the provider request itself: never copied from it into a request.
STEERING_FIELDS = frozenset({"callBackUrl", "callbackUrl", "callback_url", "model"})


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A provider task as one status query saw it, whatever the family.

    ``urls``: the result files when ``succeeded``. ``fail_code``/``fail_message``: the provider's reason when
    ``failed``. ``progress``: 0-100 when the model reports it. ``credits_consumed``: what the provider says it
    billed, when it says. ``param``: the original create request as the provider echoes it (decoded; used to
    prove that a provider task is ours), or None.
    """

    state: State
    urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_message: str | None = None
    progress: float | None = None
    credits_consumed: float | None = field(default=None, compare=False)
    param: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CallbackHint:
    """What a provider callback body says, read only as a hint (its body is not signed): the provider task it
    names, and whether it says the task ended (``final``) or only reached a stage on the way (Suno's ``text``
    and ``first``). Only a status query settles a task."""

    provider_task_id: str | None
    final: bool = True
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One create call: the path under the base URL and the JSON body."""

    path: str
    body: dict[str, Any]


class Family:
    """The adapter interface, with the defaults most families share. One instance per family (``FAMILY`` in its
    module); stateless and safe to share."""

    name: str = ""
    create_path: str = ""
    status_path: str = ""

    def create_request(self, model: Model, input: Mapping[str, Any], callback_url: str | None) -> CreateRequest:
        """The create call for a task of ``model`` with the client's validated ``input`` (``input.prompt``
        always). Fields that steer the request (``callBackUrl``, ``model``) never come from ``input``. Pure."""
        raise NotImplementedError

    def read_record(self, data: Any) -> ProviderStatus:
        """The status-query record (the envelope's ``data``) as a :class:`ProviderStatus`. Raises
        ProviderTransient when the record cannot be read (unknown state, malformed JSON field): look again."""
        raise NotImplementedError

    def read_callback(self, body: Any) -> CallbackHint:
        """A callback body (any JSON) as a hint. Never raises: a body it cannot read names no task."""
        data = body.get("data") if isinstance(body, dict) else None
        named = data.get("taskId") if isinstance(data, dict) else None
        return CallbackHint(task_id_of(named))

    def classify(self, code: int, msg: str, *, create: bool) -> ErrorClass:
        """The class of an answer other than success (``code`` the body code, or the HTTP status when the body
        has none). A status query is never refused for good by the provider's word alone: whatever it answers
        (401, 404, "recordInfo is null", 5xx...), the task may still finish and be billed, so it is looked at
        again until the deadline. A create: 401, 402 and 433 concern the key or account (its circuit opens), 429,
        455 and 5xx but 505 are worth retrying, the rest refuse the task."""
        if not create:
            return "transient"
        if code in (401, 402, 433):
            return "account"
        if code in (429, 455) or (500 <= code < 600 and code != 505):
            return "transient"
        if code == 505 or 400 <= code < 500:
            return "permanent"
        return "transient"  # 1xx/3xx in a body: not a verdict we know

    def is_ours(self, param: Mapping[str, Any], model: Model, task_id: str, input: Mapping[str, Any]) -> bool:
        """Does the provider's echo of a create request (``param``, decoded) show the task ``task_id`` of
        ``model`` with ``input``? The callback URL names our task when there is one; else the prompt must match,
        and the model too when the echo carries one. Pure."""
        named = callback_task(param.get("callBackUrl"))
        if named is not None:
            return named == task_id
        echoed = self.echoed_prompt(param)
        if echoed is None or echoed != input.get("prompt"):
            return False
        echoed_model = param.get("model")
        return echoed_model is None or echoed_model == model.provider_model

    def echoed_prompt(self, param: Mapping[str, Any]) -> Any:
        """The prompt inside a decoded ``param``; families whose prompt is top-level keep this default."""
        return param.get("prompt")


# --- Readers shared by the families ----------------------------------------------------------------------------


def json_value(raw: Any) -> Any:
    """A field documented as a JSON string that some answers give as an object (or ``""``/null: None). Raises
    ProviderTransient when it is a string that is not JSON."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderTransient("a JSON field of the record is not JSON", provider_code=200) from None
    return raw


def param_of(raw: Any) -> dict[str, Any] | None:
    """The echoed create request: an object or a JSON string of one, whose ``input`` may itself be a JSON
    string (decoded here too). None when it is missing or unreadable."""
    try:
        value = json_value(raw)
    except ProviderTransient:
        return None
    if not isinstance(value, dict):
        return None
    if "input" in value:
        try:
            inner = json_value(value["input"])
        except ProviderTransient:
            inner = None
        value = {**value, "input": inner if isinstance(inner, dict) else None}
    return value


def urls_of(result: Any) -> tuple[str, ...]:
    """Result URLs from a result object (``resultUrls``, ``resultUrl`` or ``urls``; a list or one string)."""
    if not isinstance(result, dict):
        return ()
    for key in ("resultUrls", "resultUrl", "urls"):
        value = result.get(key)
        if isinstance(value, str) and value:
            return (value,)
        if isinstance(value, list):
            return tuple(u for u in value if isinstance(u, str) and u)
    return ()


def progress_of(raw: Any) -> float | None:
    """A progress figure as 0-100: a number, or a numeric string; "0.00"-"1.00" style fractions are scaled up
    only when given as a string with a decimal point and at most 1 (4o Image's style)."""
    value: float
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return None
        if "." in raw and value <= 1.0:
            value *= 100
    else:
        return None
    if value != value or value < 0:  # NaN or negative: not a figure
        return None
    return min(100.0, value)


def number_of(raw: Any) -> float | None:
    """A number field (int, float or numeric string), else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None


def text_of(raw: Any) -> str | None:
    """A text field; ``""`` and null are None."""
    if raw is None or raw == "":
        return None
    return str(raw)


def callback_task(url: Any) -> str | None:
    """Our task id in a callback URL we built (``?task=<id>``), or None when the URL names none."""
    if not isinstance(url, str) or not url:
        return None
    try:
        found = parse_qs(urlsplit(url).query).get("task")
    except ValueError:
        return None
    return found[0] if found else None


def task_id_of(named: Any) -> str | None:
    """A provider task id from a callback field: a non-empty string of at most 200 characters, else None."""
    return named if isinstance(named, str) and 0 < len(named) <= 200 else None


def optional(body: dict[str, Any], name: str, value: Any) -> None:
    """Set ``body[name]`` when ``value`` is given (not None)."""
    if value is not None:
        body[name] = value
