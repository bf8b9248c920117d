"""The JSON shapes the simulator answers with: envelopes, status records and callback bodies.

Jobs-API times are epoch milliseconds; Veo times are ``"YYYY-MM-DD HH:MM:SS"`` in UTC. Credits are written as
integers when they are whole numbers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

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
    """``data`` of ``GET /api/v1/jobs/recordInfo`` at ``now``.

    ``resultJson`` is a JSON string ``{"resultUrls": [...]}`` once the task succeeded and ``""`` otherwise;
    ``failCode``/``failMsg`` are ``""`` unless it failed; ``completeTime`` is null and ``costTime`` 0 until
    the task is done.
    """
    state = task.state(now)
    done = task.is_done(now)
    failed = state == "fail"
    return {
        "taskId": task.task_id,
        "model": task.model,
        "state": state,
        "param": task.param,
        "resultJson": json.dumps({"resultUrls": task.result_urls()}) if state == "success" else "",
        "failCode": task.fail_code if failed and task.fail_code is not None else "",
        "failMsg": task.fail_msg if failed else "",
        "costTime": epoch_ms(task.duration) if done else 0,
        "createTime": epoch_ms(task.created_at),
        "updateTime": epoch_ms(task.updated_at(now)),
        "completeTime": epoch_ms(task.finished_at) if done else None,
        "progress": task.progress(now),
    }


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
    ``failMsg`` and ``data.state == "fail"`` with ``failCode``/``failMsg``.
    """
    record = jobs_record(task, task.finished_at)
    data: dict[str, object] = {
        "taskId": task.task_id,
        "model": task.model,
        "state": record["state"],
        "resultJson": record["resultJson"],
        "failCode": record["failCode"],
        "failMsg": record["failMsg"],
        "param": task.param,
        "consumeCredits": number(task.cost),
        "remainedCredits": number(remained_credits),
        "costTime": record["costTime"],
        "createTime": record["createTime"],
        "completeTime": record["completeTime"],
        "updateTime": record["updateTime"],
    }
    if task.fail_code is None:
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


def callback_body(task: SimTask, remained_credits: float) -> dict[str, object]:
    """The callback body for ``task``, by family."""
    return jobs_callback(task, remained_credits) if task.family == "jobs" else veo_callback(task)
