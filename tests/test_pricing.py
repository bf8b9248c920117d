"""The price list and the one pricing function, without I/O: properties over the bundled list and over price lists
that hypothesis makes up (every valid input is priced, the breakdown sums to the cost, prices never fall as priced
units rise, every allowed value has a price, unknown fields and wrong types are refused, defaults are applied), and
the one-line errors of a bad price list (naming the model and the field), also at the start of `creditq api`."""

from __future__ import annotations

import copy
import math
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import pricing
from shared.config import BUNDLED_PRICING
from shared.errors import ConfigError, InvalidInput
from shared.pricing import InputField, Model
from tests.conftest import CREDITQ

BUNDLED = pricing.load(BUNDLED_PRICING)
DOC = tomllib.loads(BUNDLED_PRICING.read_text())
MODELS = sorted(BUNDLED.models)


# --- Strategies: values a field accepts, and values it must refuse -------------------------------------------


def valid_value(f: InputField) -> st.SearchStrategy[Any]:
    """Every value ``f`` allows (within a small size)."""
    if f.enum is not None:
        return st.sampled_from(f.enum)
    if f.type == "boolean":
        return st.booleans()
    if f.type == "integer":
        low = int(f.minimum) if f.minimum is not None else -pricing.MAX_INT
        high = int(f.maximum) if f.maximum is not None else pricing.MAX_INT
        return st.integers(low, high)
    if f.type == "number":
        bottom = f.minimum if f.minimum is not None else -1e9
        top = f.maximum if f.maximum is not None else 1e9
        return st.floats(bottom, top, allow_nan=False) | st.integers(math.ceil(bottom), math.floor(top))
    if f.type == "array":
        assert f.items is not None
        return st.lists(valid_value(f.items), min_size=f.min_items or 0, max_size=f.max_items or 3)
    if f.format == "url":
        return st.from_regex(r"https?://[a-z]{1,12}\.example(/[a-z0-9]{0,8})?", fullmatch=True)
    return st.text(min_size=max(f.min_length or 0, 1), max_size=min(f.max_length or 40, 40)).filter(
        lambda s: s.strip() != ""
    )


def wrong_type(f: InputField) -> st.SearchStrategy[Any]:
    """JSON values of another type than ``f``'s (JSON true is not an integer, 2.0 is not an integer)."""
    others: dict[str, st.SearchStrategy[Any]] = {
        "string": st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2),
        "integer": st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
        "number": st.booleans() | st.text(max_size=5) | st.lists(st.integers(), max_size=2),
        "boolean": st.integers(0, 1) | st.text(max_size=5),
        "array": st.text(max_size=5) | st.integers() | st.booleans(),
    }
    return others[f.type]


def valid_input(model: Model) -> st.SearchStrategy[dict[str, Any]]:
    required = {n: valid_value(f) for n, f in model.inputs.items() if f.required}
    optional = {n: valid_value(f) for n, f in model.inputs.items() if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def model_and_input(draw: st.DrawFn) -> tuple[Model, dict[str, Any]]:
    model = BUNDLED.models[draw(st.sampled_from(MODELS))]
    return model, draw(valid_input(model))


# Made-up price lists: a base, integer fields priced per unit, enum fields priced by value.
@st.composite
def made_up_model(draw: st.DrawFn) -> Model:
    inputs: dict[str, Any] = {}
    per_unit: dict[str, int] = {}
    by_value: dict[str, dict[str, int]] = {}
    for i in range(draw(st.integers(0, 3))):
        low = draw(st.integers(0, 5))
        high = draw(st.integers(low, low + 20))
        inputs[f"units_{i}"] = {"type": "integer", "minimum": low, "maximum": high, "default": low}
        per_unit[f"units_{i}"] = draw(st.integers(0, 50))
    for i in range(draw(st.integers(0, 3))):
        values = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=5, unique=True))
        inputs[f"choice_{i}"] = {"type": "string", "enum": values, "default": values[0]}
        by_value[f"choice_{i}"] = {v: draw(st.integers(0, 100)) for v in values}
    base = draw(st.integers(1, 100))
    doc = {
        "models": [
            {
                "model": "made/up",
                "kind": "image",
                "family": "jobs",
                "deadline_seconds": 60,
                "inputs": inputs,
                "pricing": {"base": base, "per_unit": per_unit, "by_value": by_value},
            }
        ],
        "tiers": {"free": {}},
    }
    return pricing.parse(doc).models["made/up"]


# --- Properties --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(model_and_input())
def test_every_valid_input_is_priced_and_the_breakdown_sums_to_the_cost(case: tuple[Model, dict[str, Any]]) -> None:
    model, job_input = case
    priced = pricing.price(model, job_input)
    assert priced.cost >= 1
    assert priced.cost == sum(b["credits"] for b in priced.breakdown)
    # What is stored and sent: every field given, as given, and every default of a field not given.
    for name, value in job_input.items():
        assert priced.input[name] == value
    for name, f in model.inputs.items():
        if name not in job_input and f.default is not None:
            assert priced.input[name] == f.default
    assert set(priced.input) <= set(model.inputs)
    # Validating the validated input changes nothing (it is what a worker sends, priced the same).
    again = pricing.price(model, priced.input)
    assert again.input == priced.input
    assert again.cost == priced.cost


@settings(max_examples=200, deadline=None)
@given(made_up_model(), st.data())
def test_the_price_never_falls_as_priced_units_rise(model: Model, data: st.DataObject) -> None:
    job_input = data.draw(valid_input(model))
    rules = model.price_rules
    for name in rules.per_unit:
        f = model.inputs[name]
        assert f.maximum is not None
        lower = data.draw(st.integers(int(f.minimum or 0), int(f.maximum)))
        higher = data.draw(st.integers(lower, int(f.maximum)))
        cheap = pricing.price(model, {**job_input, name: lower}).cost
        dear = pricing.price(model, {**job_input, name: higher}).cost
        assert cheap <= dear
        assert dear - cheap == rules.per_unit[name] * (higher - lower)


@settings(max_examples=100, deadline=None)
@given(made_up_model())
def test_every_allowed_value_is_priced(model: Model) -> None:
    rules = model.price_rules
    for name, table in rules.by_value.items():
        f = model.inputs[name]
        assert f.enum is not None
        for value in f.enum:
            priced = pricing.price(model, {"prompt": "p", name: value})
            (line,) = [b for b in priced.breakdown if b.get("field") == name]
            assert line == {"field": name, "value": value, "credits": table[pricing.value_key(value)]}
    # The default input's price is what GET /v1/models has always shown as `cost`.
    assert model.cost == pricing.price(model, {"prompt": "p"}).cost


def test_every_allowed_value_of_the_bundled_list_is_priced() -> None:
    for model in BUNDLED.models.values():
        for name in model.price_rules.by_value:
            f = model.inputs[name]
            for value in f.enum or (True, False):
                assert pricing.price(model, {"prompt": "p", name: value}).cost >= 1


@settings(max_examples=200, deadline=None)
@given(
    model_and_input(),
    st.text(min_size=1, max_size=20) | st.sampled_from(sorted(pricing.RESERVED)),
    st.integers() | st.text(max_size=5) | st.booleans(),
)
def test_a_field_the_model_does_not_take_is_refused(case: tuple[Model, dict[str, Any]], name: str, value: Any) -> None:
    model, job_input = case
    if name in model.inputs:
        return
    with pytest.raises(InvalidInput) as e:
        pricing.price(model, {**job_input, name: value})
    assert [d["field"] for d in e.value.extra["details"]] == [f"input.{name}"]


@settings(max_examples=300, deadline=None)
@given(model_and_input(), st.data())
def test_a_value_of_the_wrong_type_is_refused(case: tuple[Model, dict[str, Any]], data: st.DataObject) -> None:
    model, job_input = case
    name = data.draw(st.sampled_from(sorted(model.inputs)))
    bad = data.draw(wrong_type(model.inputs[name]))
    with pytest.raises(InvalidInput) as e:
        pricing.price(model, {**job_input, name: bad})
    assert [d["field"] for d in e.value.extra["details"]] == [f"input.{name}"]


@settings(max_examples=100, deadline=None)
@given(model_and_input())
def test_prompt_is_required(case: tuple[Model, dict[str, Any]]) -> None:
    model, job_input = case
    del job_input["prompt"]
    with pytest.raises(InvalidInput) as e:
        pricing.price(model, job_input)
    assert e.value.extra["details"] == [{"field": "input.prompt", "message": "is required"}]


def test_every_bad_field_is_named_at_once() -> None:
    veo = BUNDLED.models["veo3_fast"]
    bad = {"prompt": " ", "resolution": "8k", "seeds": True, "image_urls": ["ftp://x"], "callBackUrl": "http://x"}
    with pytest.raises(InvalidInput) as e:
        pricing.price(veo, bad)
    fields = {d["field"]: d["message"] for d in e.value.extra["details"]}
    assert set(fields) == {f"input.{n}" for n in bad}
    assert "never taken from input" in fields["input.callBackUrl"]
    assert fields["input.seeds"] == "must be an integer"


# --- The bundled prices (the agreed table) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "job_input", "cost"),
    [
        ("veo3_fast", {}, 80),
        ("veo3_fast", {"resolution": "1080p"}, 120),
        ("veo3_fast", {"resolution": "4k"}, 160),
        ("veo3", {"resolution": "720p"}, 250),
        ("veo3", {"resolution": "1080p"}, 375),
        ("veo3", {"resolution": "4k"}, 500),
        ("kling/v2-1-standard", {}, 60),
        ("kling/v2-1-standard", {"duration": "10"}, 120),
        ("bytedance/seedream-v4-text-to-image", {}, 6),
        ("bytedance/seedream-v4-text-to-image", {"max_images": 4}, 24),
        ("google/nano-banana", {"image_size": "16:9", "output_format": "jpeg"}, 4),
        ("suno/v4-5", {"custom_mode": True, "style": "jazz", "title": "t"}, 12),
    ],
)
def test_bundled_prices(model: str, job_input: dict[str, Any], cost: int) -> None:
    assert pricing.price(BUNDLED.models[model], {"prompt": "p", **job_input}).cost == cost


def test_bundled_inputs_are_the_agreed_fields() -> None:
    # Exactly the fields the strict simulator accepts per model (besides prompt).
    agreed = {
        "google/nano-banana": {"output_format", "image_size"},
        "bytedance/seedream-v4-text-to-image": {"image_size", "image_resolution", "max_images", "seed"},
        "kling/v2-1-standard": {"image_url", "duration", "negative_prompt", "cfg_scale"},
        "suno/v4-5": {"custom_mode", "instrumental", "style", "title"},
        "veo3_fast": {"aspect_ratio", "resolution", "image_urls", "seeds", "watermark"},
        "veo3": {"aspect_ratio", "resolution", "image_urls", "seeds", "watermark"},
    }
    assert {m: set(model.inputs) - {"prompt"} for m, model in BUNDLED.models.items()} == agreed
    prompt = BUNDLED.models["veo3"].inputs["prompt"]
    assert (prompt.type, prompt.required, prompt.min_length, prompt.max_length) == ("string", True, 1, 5000)


def test_a_model_built_in_code_has_a_fixed_price_and_takes_the_prompt() -> None:
    m = Model("x/y", "image", "jobs", 7, 60, 5)
    assert pricing.price(m, {"prompt": "p"}).breakdown == [{"credits": 7}]
    with pytest.raises(InvalidInput):
        pricing.price(m, {"prompt": "p", "n": 2})


# --- A bad price list: one line naming the model and the field ----------------------------------------------


def _edit(path: str, value: Any) -> dict[str, Any]:
    """The bundled document with ``path`` (``models.<model>.a.b``) set to ``value`` (None: deleted)."""
    doc = copy.deepcopy(DOC)
    _, model, *keys = path.split(".")
    node = next(m for m in doc["models"] if m["model"] == model.replace("|", "."))
    for k in keys[:-1]:
        node = node[k]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("models.veo3.pricing.by_value", {"resolution": {"720p": 1, "1080p": 2}}, "value '4k' has no price"),
        ("models.veo3.pricing.by_value", {"resolution": {"720p": 1, "1080p": 2, "4k": 3, "8k": 4}}, "'8k'"),
        ("models.veo3.pricing.by_value", {"watermark": {"a": 1}}, "pricing.by_value.watermark"),
        ("models.veo3.pricing.by_value", {"nope": {"a": 1}}, "pricing.by_value.nope"),
        ("models.veo3.pricing.per_unit", {"seeds": 1}, "pricing.per_unit.seeds"),
        ("models.veo3.pricing.base", -1, "pricing.base"),
        ("models.veo3.inputs.resolution", {"type": "string", "enum": ["720p", "1080p", "4k"], "default": "8k"}, "8k"),
        ("models.veo3.inputs.seeds", {"type": "int"}, "inputs.seeds: type"),
        ("models.veo3.inputs.watermark", {"type": "string"}, "inputs.watermark: a string needs max_length"),
        ("models.veo3.inputs.callBackUrl", {"type": "string", "format": "url"}, "inputs.callBackUrl"),
        ("models.veo3.inputs.model", {"type": "string", "max_length": 9}, "inputs.model"),
        ("models.veo3.inputs.seeds", {"type": "integer", "minimum": 9, "maximum": 1}, "inputs.seeds"),
        ("models.veo3.inputs.seeds", {"type": "integer", "max_length": 3}, "inputs.seeds: max_length"),
        ("models.veo3.inputs.image_urls", {"type": "array", "items": {"type": "string", "format": "url"}}, "max_items"),
        ("models.veo3.inputs.prompt", {"type": "integer"}, "inputs.prompt"),
        ("models.veo3.inputs.resolution", {"type": "string", "enum": ["720p", "1080p", "4k"]}, "needs a default"),
        ("models.veo3.pricing", {"base": 0, "by_value": {"resolution": {"720p": 0, "1080p": 1, "4k": 2}}}, "cost 0"),
        ("models.veo3.cost", 5, "either cost"),
        ("models.veo3.colour", "red", "unknown key 'colour'"),
        ("models.kling/v2-1-standard.inputs.cfg_scale", {"type": "number", "maximum": "1"}, "cfg_scale: maximum"),
        ("models.suno/v4-5.cost", None, "cost (a fixed price) or a [pricing] table is required"),
        ("models.suno/v4-5.family", "mp3", "family"),
    ],
)
def test_a_bad_price_list_is_one_line_naming_model_and_field(path: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        pricing.parse(_edit(path, value))
    message = e.value.message
    assert "\n" not in message
    assert message.startswith(f"CREDITQ_PRICING: model {path.split('.')[1]!r}"), message
    assert says in message, message


def test_the_bundled_list_loads() -> None:
    assert set(BUNDLED.models) == set(MODELS)
    assert pricing.parse(DOC) == BUNDLED


def test_a_bad_price_list_stops_api_and_worker_at_start_in_one_line(tmp_path: Path, base_env: dict[str, str]) -> None:
    bad = tmp_path / "pricing.toml"
    bad.write_text(BUNDLED_PRICING.read_text().replace('"1080p" = 120, ', ""))
    env = {**base_env, "CREDITQ_PRICING": str(bad), "PATH": "/usr/bin:/bin"}
    for args in (["api", "--port", "9"], ["worker"]):
        run = subprocess.run([CREDITQ, *args], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert run.returncode != 0
        # Log lines (JSON) may come before; the error is one line, and no traceback.
        errors = [line for line in run.stderr.splitlines() if not line.startswith("{")]
        assert errors == [
            "creditq: error: CREDITQ_PRICING: model 'veo3_fast': pricing.by_value.resolution: "
            "value '1080p' has no price (every allowed value needs one)"
        ], run.stderr
