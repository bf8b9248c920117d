"""One simulated provider task and its lifecycle, computed from the clock rather than stored.

A task is created with a start time and a duration (already multiplied by ``time_scale``). Its jobs-API state
at any moment is ``waiting`` for the first 10% of the duration, then ``generating``, then ``success`` or
``fail`` (when a ``[sim:fail=CODE]`` directive asked for it) from ``created_at + duration`` on. Nothing has to
run for a task to advance: every answer derives the state from the current time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["jobs", "veo", "suno"]
Kind = Literal["image", "video", "audio"]
State = Literal["waiting", "generating", "success", "fail"]

# Substrings of a model slug (lower-cased) that make it a video or an audio model; anything else is an image.
VIDEO_HINTS = ("veo", "video", "kling", "wan", "hailuo", "sora", "seedance")
AUDIO_HINTS = ("suno", "audio", "music", "tts", "elevenlabs")
# Default generation time per kind, in seconds, before ``time_scale``.
DEFAULT_SECONDS: dict[Kind, float] = {"image": 3.0, "video": 20.0, "audio": 10.0}
# Share of the duration spent in ``waiting`` before ``generating``.
WAITING_SHARE = 0.1
RESULT_BASE_URL = "https://sim.local/results"
_RESULT_EXTENSION: dict[Kind, str] = {"image": "png", "video": "mp4", "audio": "mp3"}
_FAIL_MESSAGES = {
    "400": "Bad request: the input was rejected.",
    "422": "Content policy violation: the prompt was rejected.",
    "451": "The source image could not be fetched.",
    "455": "Service unavailable: the model is under maintenance.",
    "500": "Internal error while generating.",
    "501": "Generation failed.",
    "505": "The feature is disabled.",
}


def infer_kind(model: str) -> Kind:
    """Guess image, video or audio from a model slug (video hints win over audio hints)."""
    slug = model.lower()
    if any(hint in slug for hint in VIDEO_HINTS):
        return "video"
    if any(hint in slug for hint in AUDIO_HINTS):
        return "audio"
    return "image"


def fail_message(code: str) -> str:
    """The ``failMsg`` shown for a simulated failure with ``failCode`` = ``code``."""
    return _FAIL_MESSAGES.get(code, f"Simulated failure (code {code}).")


@dataclass(slots=True, eq=False)
class SimTask:
    """A task accepted by the simulator. Times are epoch seconds; ``duration`` is already scaled."""

    task_id: str
    family: Family
    model: str
    prompt: str
    param: str  # the original request body, serialised as JSON
    kind: Kind
    created_at: float
    duration: float
    cost: float
    fail_code: str | None = None
    callback_url: str | None = None
    nocallback: bool = False
    flaky: bool = False
    hang: float | None = None  # the extras of sim.directives: hang, garbage, query code, unknown state
    garbage: bool = False
    query_code: int | None = None
    unknown_state: str | None = None
    null_queries: int = 0  # [sim:null=N]: the first N status queries answer "recordInfo is null"
    query_body_code: int | None = None  # [sim:querybody=CODE]: every second query answers body code CODE
    callbacks: int = 1  # [sim:callbacks=N]: the completion callback is delivered N times
    key: str = ""  # the bearer key that created it
    queries: int = 0

    @property
    def finished_at(self) -> float:
        """When the task reaches its end state."""
        return self.created_at + self.duration

    @property
    def generating_at(self) -> float:
        """When the task leaves ``waiting`` for ``generating``."""
        return self.created_at + WAITING_SHARE * self.duration

    @property
    def wants_callback(self) -> bool:
        """True when a callback must be sent at the end (a URL was given and no ``[sim:nocallback]``)."""
        return bool(self.callback_url) and not self.nocallback

    @property
    def fail_msg(self) -> str:
        """The failure message, or ``""`` for a task that succeeds."""
        return "" if self.fail_code is None else fail_message(self.fail_code)

    def is_done(self, now: float) -> bool:
        """True from ``finished_at`` on."""
        return now >= self.finished_at

    def state(self, now: float) -> State:
        """The jobs-API state at ``now``."""
        if self.is_done(now):
            return "success" if self.fail_code is None else "fail"
        if now >= self.generating_at:
            return "generating"
        return "waiting"

    def reported_state(self, now: float) -> str:
        """The state a status query shows at ``now``: ``unknown_state`` during the first half of the duration
        when a ``[sim:state=NAME]`` directive asked for it, else :meth:`state`."""
        if self.unknown_state is not None and now < self.created_at + self.duration / 2:
            return self.unknown_state
        return self.state(now)

    def progress(self, now: float) -> int:
        """0-99 while running (share of the duration elapsed), 100 once done."""
        if self.is_done(now):
            return 100
        elapsed = max(0.0, now - self.created_at)
        return min(99, int(elapsed / self.duration * 100)) if self.duration > 0 else 0

    def updated_at(self, now: float) -> float:
        """When the state last changed, as of ``now``."""
        if self.is_done(now):
            return self.finished_at
        if now >= self.generating_at:
            return self.generating_at
        return self.created_at

    def result_urls(self) -> list[str]:
        """The result URLs of a successful task: one file (extension by kind: png, mp4 or mp3); a Suno task
        makes two tracks."""
        count = 2 if self.family == "suno" else 1
        return [f"{RESULT_BASE_URL}/{self.task_id}/{i}.{_RESULT_EXTENSION[self.kind]}" for i in range(count)]

    def suno_stage(self, now: float) -> int:
        """How far a Suno task got at ``now``: 0 pending, 1 lyrics (``TEXT_SUCCESS``), 2 first track
        (``FIRST_SUCCESS``), 3 done (``SUCCESS`` or its failure). The stages split the duration in thirds."""
        if self.is_done(now):
            return 3
        elapsed = max(0.0, now - self.created_at)
        return min(2, int(elapsed / self.duration * 3)) if self.duration > 0 else 2

    def stage_at(self, stage: int) -> float:
        """When a Suno task reaches ``stage`` (1 or 2; 3 is :attr:`finished_at`)."""
        return self.created_at + self.duration * stage / 3
