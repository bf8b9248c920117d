"""The JSON shapes the simulator answers with: envelopes, status records and callback bodies.

Jobs-API times are epoch milliseconds; Veo times are ``"YYYY-MM-DD HH:MM:SS"`` in UTC. Credits are written as
integers when they are whole numbers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sim.models import NO_PROGRESS
from sim.tasks import SimTask

JOBS_SUCCESS_MSG = "Playground task completed successfully."
VEO_SUCCESS_MSG = "Veo3 video generated successfully."
# The jobs API calls back failures with this code whatever the task's failCode.
JOBS_FAIL_CALLBACK_CODE = 501


def envelope(code: int, msg: str, data: object = None) -> dict[str, object]:
    """The provider's envelope ``{"code", "msg", "data"}``."""
    return {"code": code, "msg": msg, "data": data}


def number(value: float) -> int | float:
    """``value`` as an int when it is whole (``1000000`` rather than ``1000000.0``)."""
    return int(value) if float(value).is_integer() else value


def epoch_ms(seconds: float) -> int:
    """Epoch seconds to epoch milliseconds."""
    return int(seconds * 1000)


def veo_time(seconds: float) -> str:
    """Epoch seconds to the Veo API's ``"YYYY-MM-DD HH:MM:SS"`` (UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def jobs_record(task: SimTask, now: float) -> dict[str, object]:
    """``data`` of ``GET /api/v1/jobs/recordInfo`` at ``now``, with the real record's shapes.

    ``resultJson`` is present once the task ended: a JSON string ``{"resultUrls": [...]}`` on success, ``""``
    on failure. ``failCode``/``failMsg``/``costTime``/``completeTime`` are null while the task runs (``""``
    for the codes on success); ``costTime`` is in milliseconds here. ``creditsConsumed`` is the task's cost on
    success, 0 on failure, null while running. ``progress`` (0-100) only for models that report it.
    """
    state = task.state(now)
    done = task.is_done(now)
    failed = state == "fail"
    record: dict[str, object] = {
        "taskId": task.task_id,
        "model": task.model,
        "state": state,
        "param": task.param,
        "failCode": (task.fail_code or "") if failed else ("" if done else None),
        "failMsg": task.fail_msg if done else None,
        "costTime": epoch_ms(task.duration) if done else None,
        "createTime": epoch_ms(task.created_at),
        "updateTime": epoch_ms(task.updated_at(now)),
        "completeTime": epoch_ms(task.finished_at) if done else None,
        "creditsConsumed": (0 if failed else number(task.cost)) if done else None,
    }
    if done:
        record["resultJson"] = json.dumps({"resultUrls": task.result_urls()}) if not failed else ""
    if task.model not in NO_PROGRESS:
        record["progress"] = task.progress(now)
    return record


def veo_error_code(fail_code: str) -> int | str:
    """A Veo ``errorCode``: the fail code as an integer when it is numeric, else the string itself."""
    return int(fail_code) if fail_code.isdigit() else fail_code


def veo_success_flag(task: SimTask, now: float) -> int:
    """0 generating (or waiting), 1 success, 2 failed."""
    state = task.state(now)
    return 1 if state == "success" else 2 if state == "fail" else 0


def veo_record(task: SimTask, now: float) -> dict[str, object]:
    """``data`` of ``GET /api/v1/veo/record-info`` at ``now``.

    ``response`` is ``{"resultUrls": [...]}`` once successful and null otherwise; ``errorCode`` is null and
    ``errorMessage`` ``""`` unless the task failed; ``completeTime`` is null until the task is done.
    """
    state = task.state(now)
    failed = state == "fail" and task.fail_code is not None
    return {
        "taskId": task.task_id,
        "paramJson": task.param,
        "successFlag": veo_success_flag(task, now),
        "response": {"resultUrls": task.result_urls()} if state == "success" else None,
        "errorCode": veo_error_code(task.fail_code) if failed and task.fail_code is not None else None,
        "errorMessage": task.fail_msg if failed else "",
        "createTime": veo_time(task.created_at),
        "updateTime": veo_time(task.updated_at(now)),
        "completeTime": veo_time(task.finished_at) if task.is_done(now) else None,
        "fallbackFlag": False,
    }


def jobs_callback(task: SimTask, remained_credits: float) -> dict[str, object]:
    """The body POSTed to a jobs-API task's ``callBackUrl`` once it is done.

    Success: code 200 and ``data.state == "success"`` with ``resultJson``; failure: code 501, ``msg`` = the
    ``failMsg`` and ``data.state == "fail"`` with ``failCode``/``failMsg`` and ``resultJson`` null. ``costTime``
    is in seconds here (milliseconds in the record), as the provider sends it.
    """
    record = jobs_record(task, task.finished_at)
    failed = task.fail_code is not None
    data: dict[str, object] = {
        "taskId": task.task_id,
        "model": task.model,
        "state": record["state"],
        "resultJson": None if failed else record["resultJson"],
        "failCode": record["failCode"],
        "failMsg": record["failMsg"],
        "param": task.param,
        "creditsConsumed": record["creditsConsumed"],
        "remainedCredits": number(remained_credits),
        "costTime": number(round(task.duration, 3)),
        "createTime": record["createTime"],
        "completeTime": record["completeTime"],
        "updateTime": record["updateTime"],
    }
    if not failed:
        return envelope(200, JOBS_SUCCESS_MSG, data)
    return envelope(JOBS_FAIL_CALLBACK_CODE, task.fail_msg, data)


def veo_callback(task: SimTask) -> dict[str, object]:
    """The body POSTed to a Veo task's ``callBackUrl`` once it is done.

    Success: ``{"code": 200, "msg": ..., "data": {"taskId", "info": {"resultUrls": [...]}}}``; failure: code =
    the numeric fail code when it lies in 400-599 (else 501), ``msg`` = the error message, ``info`` null.
    """
    if task.fail_code is None:
        return envelope(200, VEO_SUCCESS_MSG, {"taskId": task.task_id, "info": {"resultUrls": task.result_urls()}})
    code = int(task.fail_code) if task.fail_code.isdigit() and 400 <= int(task.fail_code) <= 599 else 501
    return envelope(code, task.fail_msg, {"taskId": task.task_id, "info": None})


# --- Suno ------------------------------------------------------------------------------------------------------

SUNO_FAILURES = ("CREATE_TASK_FAILED", "GENERATE_AUDIO_FAILED", "CALLBACK_EXCEPTION", "SENSITIVE_WORD_ERROR")
SUNO_STAGES = ("PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS")
SUNO_CALLBACK_TYPES = {1: "text", 2: "first", 3: "complete"}
SUNO_TRACK_SECONDS = 187.4


def suno_status(task: SimTask, now: float) -> str:
    """``data.status`` of a Suno record at ``now``: the stage reached, or the failure once a failing task
    ends (the fail code itself when it names a Suno failure, else ``GENERATE_AUDIO_FAILED``)."""
    stage = task.suno_stage(now)
    if stage == 3 and task.fail_code is not None:
        return task.fail_code if task.fail_code in SUNO_FAILURES else "GENERATE_AUDIO_FAILED"
    return SUNO_STAGES[stage]


def _suno_tracks(task: SimTask, stage: int, snake: bool) -> list[dict[str, object]]:
    urls = task.result_urls()
    tracks: list[dict[str, object]] = []
    for i, url in enumerate(urls):
        ready = stage >= 3 or (stage == 2 and i == 0)
        track = {
            "id": f"{task.task_id[:24]}-{i}",
            "audioUrl": url if ready else "",
            "sourceAudioUrl": url if ready else "",
            "streamAudioUrl": f"{url}.stream",
            "imageUrl": f"{url}.jpeg",
            "prompt": task.prompt,
            "modelName": task.model,
            "title": "",
            "tags": "",
            "createTime": epoch_ms(task.created_at),
            "duration": SUNO_TRACK_SECONDS if ready else None,
        }
        if snake:
            track = {_snake(k): v for k, v in track.items() if k != "createTime"} | {"createTime": track["createTime"]}
        tracks.append(track)
    return tracks


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def suno_record(task: SimTask, now: float) -> dict[str, object]:
    """``data`` of ``GET /api/v1/generate/record-info`` at ``now``: ``status``, the tracks in
    ``response.sunoData`` (``audioUrl`` empty until a track is ready), ``errorCode``/``errorMessage`` null
    unless it failed, ``param`` the request as a JSON string."""
    stage = task.suno_stage(now)
    status = suno_status(task, now)
    failed = status in SUNO_FAILURES
    code = task.fail_code if failed else None
    return {
        "taskId": task.task_id,
        "parentMusicId": "",
        "param": task.param,
        "response": None
        if stage == 0 or failed
        else {"taskId": task.task_id, "sunoData": _suno_tracks(task, stage, False)},
        "status": status,
        "type": "GENERATE",
        "operationType": "generate",
        "errorCode": int(code) if code is not None and code.isdigit() else None,
        "errorMessage": task.fail_msg if failed else None,
        "creditsConsumed": (0 if failed else number(task.cost)) if stage == 3 else None,
    }


def suno_callback(task: SimTask, stage: int) -> dict[str, object]:
    """A Suno callback for ``stage`` (1 ``text``, 2 ``first``, 3 ``complete``; a failing task's end is
    ``error``): snake_case ``task_id`` and the tracks so far in ``data.data``."""
    if stage == 3 and task.fail_code is not None:
        code = int(task.fail_code) if task.fail_code.isdigit() and 400 <= int(task.fail_code) <= 599 else 501
        return envelope(code, task.fail_msg, {"callbackType": "error", "task_id": task.task_id, "data": []})
    kind = SUNO_CALLBACK_TYPES[stage]
    msg = "All generated successfully." if stage == 3 else f"{kind} generation completed."
    return envelope(200, msg, {"callbackType": kind, "task_id": task.task_id, "data": _suno_tracks(task, stage, True)})


def callback_body(task: SimTask, remained_credits: float, stage: int = 3) -> dict[str, object]:
    """The callback body for ``task``, by family (``stage``: Suno's stage, 3 the end)."""
    if task.family == "suno":
        return suno_callback(task, stage)
    return jobs_callback(task, remained_credits) if task.family == "jobs" else veo_callback(task)
