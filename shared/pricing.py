"""The price list: models (their inputs, their price rules, deadline) and tiers (monthly credits and limits), from
a TOML file; and the one pricing function, :func:`price`.

Loaded once at start by :func:`load`; a malformed file is a one-line ConfigError naming CREDITQ_PRICING, the model
and the field. docs/CONFIGURATION.md describes the format.

A model declares the ``input`` fields it takes (type, allowed values, default, required) and how its price follows
them: ``base`` credits, plus for each field priced by value the credits of the value given (every allowed value has
one), plus for each field priced per unit its credits per unit times the value. :func:`price` is the only code that
turns an input into credits: quotes, submits and ``GET /v1/models`` all call it, so what is quoted is what is held
and what is held is what was validated and is sent to the provider.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError, InvalidInput

KINDS = ("image", "video", "audio")
TYPES = ("string", "integer", "number", "boolean", "array")
FORMATS = ("url",)
# Fields that steer the provider request itself: the adapters set them, a client's input never does, and a price
# list may not declare them (it would let a client choose where results go or which model runs).
RESERVED = frozenset({"model", "callBackUrl", "callbackUrl", "input"})
# Bounds of any integer or number the API takes (beyond them: a mistake, and near the edge of a bigint).
MAX_INT = 2**53 - 1
MAX_URL_LENGTH = 2048
PROMPT_MAX_LENGTH = 5000


@dataclass(frozen=True, slots=True)
class InputField:
    """One accepted ``input`` field. ``default`` None: no default (the field is omitted when absent)."""

    name: str
    type: str
    required: bool = False
    default: Any = None
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    format: str | None = None
    items: InputField | None = None  # arrays: what each element must be

    def public(self) -> dict[str, Any]:
        """The field as ``GET /v1/models`` shows it (camelCase, only what is set)."""
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        for key, value in (
            ("default", self.default),
            ("enum", list(self.enum) if self.enum is not None else None),
            ("minimum", _plain(self.minimum)),
            ("maximum", _plain(self.maximum)),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
            ("format", self.format),
        ):
            if value is not None:
                out[key] = value
        if self.items is not None:
            item = self.items.public()
            del item["required"]
            out["items"] = item
        return out

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this field, or None. Pure."""
        if self.type == "string":
            if not isinstance(value, str):
                return "must be a string"
            if self.min_length and not value.strip():
                return "must be a non-empty string"
            if self.min_length is not None and len(value) < self.min_length:
                return f"must be at least {self.min_length} characters"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            if self.format == "url" and not _is_url(value):
                return "must be an http or https URL"
        elif self.type == "integer":
            # JSON true/false are not integers (Python's bool is an int), nor is 2.0.
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be an integer"
            if abs(value) > MAX_INT:
                return "is out of range"
        elif self.type == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "must be a number"
            if not math.isfinite(value) or abs(value) > MAX_INT:
                return "is out of range"
        elif self.type == "boolean":
            if not isinstance(value, bool):
                return "must be true or false"
        elif self.type == "array":
            if not isinstance(value, list):
                return "must be an array"
            if self.min_items is not None and len(value) < self.min_items:
                return f"must have at least {self.min_items} items"
            if self.max_items is not None and len(value) > self.max_items:
                return f"must have at most {self.max_items} items"
            if self.items is not None:
                for i, item in enumerate(value):
                    why = self.items.problem(item)
                    if why is not None:
                        return f"item {i} {why}"
        if self.type in ("integer", "number"):
            if self.minimum is not None and value < self.minimum:
                return f"must be ≥ {_plain(self.minimum)}"
            if self.maximum is not None and value > self.maximum:
                return f"must be ≤ {_plain(self.maximum)}"
        if self.enum is not None and value not in self.enum:
            return "must be one of " + ", ".join(_show(v) for v in self.enum)
        return None


@dataclass(frozen=True, slots=True)
class PriceRules:
    """How a model's price follows its input: ``base`` plus, per field, credits by value or per unit."""

    base: int
    by_value: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # field → value key → credits
    per_unit: Mapping[str, int] = field(default_factory=dict)  # field → credits per unit

    def public(self) -> dict[str, Any]:
        """The rules as ``GET /v1/models`` shows them: a client can compute any price from them."""
        rules: list[dict[str, Any]] = [{"field": f, "byValue": dict(v)} for f, v in self.by_value.items()]
        rules += [{"field": f, "perUnit": c} for f, c in self.per_unit.items()]
        return {"base": self.base, "rules": rules}


@dataclass(frozen=True, slots=True)
class Priced:
    """What :func:`price` found: the input as it will be stored and sent (defaults applied), its cost, and the
    breakdown (``[{"field"?, "value"?, "credits"}]``, summing to ``cost``)."""

    input: dict[str, Any]
    cost: int
    breakdown: list[dict[str, Any]]


DEFAULT_PROMPT = InputField("prompt", "string", required=True, min_length=1, max_length=PROMPT_MAX_LENGTH)


@dataclass(frozen=True, slots=True)
class Model:
    """A model of the price list. ``cost`` is the price of the default input (what ``GET /v1/models`` has always
    shown as ``cost``); a model built without ``rules`` is priced ``cost`` whatever its input."""

    model: str
    kind: str
    family: str
    cost: int
    deadline_seconds: float
    typical_seconds: float
    inputs: Mapping[str, InputField] = field(default_factory=lambda: {"prompt": DEFAULT_PROMPT}, compare=False)
    rules: PriceRules | None = field(default=None, compare=False)
    # The model's name at the provider when it differs from ours (Suno's "V4_5" for "suno/v4-5"); "" = the same.
    provider_model: str = ""

    @property
    def price_rules(self) -> PriceRules:
        """The model's rules (a model built in code without rules has a fixed price: ``cost``)."""
        return self.rules if self.rules is not None else PriceRules(base=self.cost)

    def __post_init__(self) -> None:
        if not self.provider_model:
            object.__setattr__(self, "provider_model", self.model)

    def public(self) -> dict[str, Any]:
        """The model as ``GET /v1/models`` shows it: the contract's fields plus ``inputs`` and ``pricing``."""
        return {
            "model": self.model,
            "kind": self.kind,
            "family": self.family,
            "cost": self.cost,
            "inputs": {name: f.public() for name, f in self.inputs.items()},
            "pricing": self.price_rules.public(),
        }


def price(model: Model, job_input: Mapping[str, Any], where: str = "input") -> Priced:
    """THE pricing function: validate ``job_input`` against the model's declared inputs, apply the defaults, and
    price it. Pure (no I/O); the same input and price list always give the same answer.

    A field the model does not take, a value it does not allow, a wrong type, a missing required field → raises
    InvalidInput whose ``details`` name every bad field as ``<where>.<field>``. A JSON null counts as absent.
    """
    details: list[dict[str, str]] = []
    validated: dict[str, Any] = {}
    for name, value in job_input.items():
        spec = model.inputs.get(name)
        if spec is None:
            why = "steers the provider request and is never taken from input" if name in RESERVED else None
            details.append({"field": f"{where}.{name}", "message": why or f"is not an input of {model.model}"})
            continue
        if value is None:
            continue
        problem = spec.problem(value)
        if problem is not None:
            details.append({"field": f"{where}.{name}", "message": problem})
        else:
            validated[name] = value
    for name, spec in model.inputs.items():
        if job_input.get(name) is not None:
            continue
        if spec.required:
            details.append({"field": f"{where}.{name}", "message": "is required"})
        elif spec.default is not None:
            validated[name] = spec.default
    # Stored (and sent) in the order the price list declares the fields.
    validated = {name: validated[name] for name in model.inputs if name in validated}
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise InvalidInput(f"{first['field']}: {first['message']}{more}", details=details)
    cost, breakdown = _cost(model.price_rules, validated)
    return Priced(input=validated, cost=cost, breakdown=breakdown)


def _cost(rules: PriceRules, validated: Mapping[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    breakdown: list[dict[str, Any]] = []
    if rules.base or not (rules.by_value or rules.per_unit):
        breakdown.append({"credits": rules.base})
    for name, table in rules.by_value.items():
        value = validated[name]  # load() made sure a priced field always has a value (default or required)
        breakdown.append({"field": name, "value": value, "credits": table[value_key(value)]})
    for name, per in rules.per_unit.items():
        value = validated[name]
        breakdown.append({"field": name, "value": value, "credits": per * value})
    return sum(int(b["credits"]) for b in breakdown), breakdown


def value_key(value: Any) -> str:
    """The key of a field value in a ``by_value`` table (TOML keys are strings): ``true``/``false`` for booleans,
    the decimal text for integers, the string itself for strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    monthly_credits: int
    daily_jobs: int  # 0: no limit
    concurrent_jobs: int  # 0: no limit
    cooldown_seconds: dict[str, int] = field(default_factory=dict)
    # Subscription credits of this tier outlive their billing period (true) or expire at its end (false).
    rollover: bool = False


@dataclass(frozen=True, slots=True)
class Pricing:
    models: dict[str, Model]
    tiers: dict[str, Tier]

    def model(self, name: str) -> Model | None:
        return self.models.get(name)

    def tier(self, name: str) -> Tier:
        """The tier by name; an account whose tier left the price list is treated as ``free``."""
        return self.tiers.get(name) or self.tiers["free"]


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"CREDITQ_PRICING: {where} must be true or false")
    return value


def load(path: Path) -> Pricing:
    """Parse and validate the pricing file. Raises ConfigError (one line) naming CREDITQ_PRICING, the model and the
    field at fault."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"CREDITQ_PRICING: cannot read {path}: {e}") from None
    return parse(data)


def parse(data: Mapping[str, Any]) -> Pricing:
    """The price list from its parsed TOML document. Pure. Raises ConfigError as :func:`load`."""
    models: dict[str, Model] = {}
    raw_models = data.get("models", [])
    if not isinstance(raw_models, list):
        raise ConfigError("CREDITQ_PRICING: models must be an array of tables ([[models]])")
    for i, m in enumerate(raw_models):
        model = _model(i, m)
        if model.model in models:
            raise ConfigError(f"CREDITQ_PRICING: model {model.model!r} is listed twice")
        models[model.model] = model
    tiers: dict[str, Tier] = {}
    for name, t in data.get("tiers", {}).items():
        try:
            tier = Tier(
                name=name,
                monthly_credits=int(t.get("monthly_credits", 0)),
                daily_jobs=int(t.get("daily_jobs", 0)),
                concurrent_jobs=int(t.get("concurrent_jobs", 0)),
                cooldown_seconds={str(k): int(v) for k, v in dict(t.get("cooldown_seconds", {})).items()},
                rollover=_flag(t.get("rollover", False), f"tiers.{name}.rollover"),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"CREDITQ_PRICING: tiers.{name}: {e}") from None
        tiers[name] = tier
    if not models:
        raise ConfigError("CREDITQ_PRICING: no [[models]] defined")
    if "free" not in tiers:
        raise ConfigError("CREDITQ_PRICING: a [tiers.free] table is required (the default tier)")
    return Pricing(models=models, tiers=tiers)


def _families() -> tuple[str, ...]:
    """The families with an adapter (shared.families imports this module's Model, hence the late import)."""
    from shared import families

    return families.names()


# --- Loading, one check at a time: every failure names the model and the field ------------------------------

_MODEL_KEYS = {
    "model",
    "kind",
    "family",
    "provider_model",
    "cost",
    "deadline_seconds",
    "typical_seconds",
    "inputs",
    "pricing",
}
_FIELD_KEYS = {
    "type",
    "required",
    "default",
    "enum",
    "minimum",
    "maximum",
    "min_length",
    "max_length",
    "min_items",
    "max_items",
    "format",
    "items",
}
_PRICING_KEYS = {"base", "by_value", "per_unit"}


def _model(i: int, m: Any) -> Model:
    if not isinstance(m, dict):
        raise ConfigError(f"CREDITQ_PRICING: models[{i}] must be a table")
    name = m.get("model")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"CREDITQ_PRICING: models[{i}]: model must be a non-empty string")
    at = f"CREDITQ_PRICING: model {name!r}"
    unknown = set(m) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_MODEL_KEYS))})")
    kind, family = m.get("kind"), m.get("family")
    if kind not in KINDS:
        raise ConfigError(f"{at}: kind must be one of {', '.join(KINDS)}")
    families = _families()
    if family not in families:
        raise ConfigError(f"{at}: family must be one of {', '.join(families)}")
    provider_model = m.get("provider_model", "")
    if not isinstance(provider_model, str):
        raise ConfigError(f"{at}: provider_model must be a string")
    deadline = _positive_number(at, "deadline_seconds", m.get("deadline_seconds"))
    typical = _positive_number(at, "typical_seconds", m.get("typical_seconds", 10))

    raw_inputs = m.get("inputs", {})
    if not isinstance(raw_inputs, dict):
        raise ConfigError(f"{at}: inputs must be a table of fields")
    inputs: dict[str, InputField] = {"prompt": DEFAULT_PROMPT}
    for fname, spec in raw_inputs.items():
        inputs[fname] = _field(f"{at}: inputs.{fname}", fname, spec)
    prompt = inputs["prompt"]
    if prompt.type != "string" or not prompt.required:
        raise ConfigError(f"{at}: inputs.prompt must be a required string (every job carries input.prompt)")

    if "cost" in m and "pricing" in m:
        raise ConfigError(f"{at}: give either cost (a fixed price) or a [pricing] table, not both")
    if "pricing" in m:
        rules = _rules(at, m["pricing"], inputs)
    elif "cost" in m:
        rules = PriceRules(base=_whole(at, "cost", m["cost"]))
    else:
        raise ConfigError(f"{at}: cost (a fixed price) or a [pricing] table is required")
    _check_positive(at, rules, inputs)
    defaults = {n: f.default for n, f in inputs.items() if f.default is not None}
    cost, _ = _cost(rules, defaults)
    return Model(name, kind, family, cost, deadline, typical, inputs, rules, provider_model)


def _field(at: str, name: str, spec: Any, item: bool = False) -> InputField:
    if not isinstance(spec, dict):
        raise ConfigError(f'{at} must be a table such as {{ type = "string" }}')
    if not item and name in RESERVED:
        raise ConfigError(f"{at}: {name!r} steers the provider request and cannot be an input")
    unknown = set(spec) - _FIELD_KEYS
    if unknown:
        raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_FIELD_KEYS))})")
    ftype = spec.get("type")
    if ftype not in TYPES:
        raise ConfigError(f"{at}: type must be one of {', '.join(TYPES)}")

    def allowed_for(keys: tuple[str, ...], types: tuple[str, ...]) -> None:
        for key in keys:
            if key in spec and ftype not in types:
                raise ConfigError(f"{at}: {key} does not apply to type {ftype}")

    allowed_for(("minimum", "maximum"), ("integer", "number"))
    allowed_for(("min_length", "max_length", "format"), ("string",))
    allowed_for(("min_items", "max_items", "items"), ("array",))
    allowed_for(("enum",), ("string", "integer", "number"))
    if item and ("required" in spec or "default" in spec):
        raise ConfigError(f"{at}: an array's items take no required or default")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{at}: required must be true or false")

    bound_type = int if ftype == "integer" else float
    minimum = _bound(at, "minimum", spec.get("minimum"), bound_type)
    maximum = _bound(at, "maximum", spec.get("maximum"), bound_type)
    min_length = _count(at, "min_length", spec.get("min_length"))
    max_length = _count(at, "max_length", spec.get("max_length"))
    min_items = _count(at, "min_items", spec.get("min_items"))
    max_items = _count(at, "max_items", spec.get("max_items"))
    for low, high, what in ((minimum, maximum, "minimum"), (min_length, max_length, "min_length")):
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{at}: {what} is above its maximum")
    if min_items is not None and max_items is not None and min_items > max_items:
        raise ConfigError(f"{at}: min_items is above max_items")
    fmt = spec.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"{at}: format must be one of {', '.join(FORMATS)}")
    if fmt == "url" and max_length is None:
        max_length = MAX_URL_LENGTH
    if ftype == "string" and max_length is None and "enum" not in spec:
        raise ConfigError(f'{at}: a string needs max_length, an enum or format = "url"')

    items = None
    if ftype == "array":
        if max_items is None:
            raise ConfigError(f"{at}: an array needs max_items")
        if "items" not in spec:
            raise ConfigError(f"{at}: an array needs items (the type of its elements)")
        items = _field(f"{at}.items", name, spec["items"], item=True)
        if items.type == "array":
            raise ConfigError(f"{at}.items: arrays of arrays are not supported")

    enum: tuple[Any, ...] | None = None
    if "enum" in spec:
        raw = spec["enum"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{at}: enum must be a non-empty list")
        enum = tuple(raw)
        if len(set(map(value_key, enum))) != len(enum):
            raise ConfigError(f"{at}: enum lists a value twice")

    f = InputField(
        name=name,
        type=ftype,
        required=required,
        enum=enum,
        minimum=minimum,
        maximum=maximum,
        min_length=min_length,
        max_length=max_length,
        min_items=min_items,
        max_items=max_items,
        format=fmt,
        items=items,
    )
    if enum is not None:
        for v in enum:
            why = f.problem(v)
            if why is not None:
                raise ConfigError(f"{at}: enum value {_show(v)} {why}")
    default = spec.get("default")
    if default is not None:
        if required:
            raise ConfigError(f"{at}: a required field takes no default")
        why = f.problem(default)
        if why is not None:
            raise ConfigError(f"{at}: default {_show(default)} {why}")
        f = dataclasses.replace(f, default=default)
    return f


def _rules(at: str, raw: Any, inputs: Mapping[str, InputField]) -> PriceRules:
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: pricing must be a table")
    unknown = set(raw) - _PRICING_KEYS
    if unknown:
        raise ConfigError(f"{at}: pricing: unknown key {sorted(unknown)[0]!r} (known: base, by_value, per_unit)")
    base = _whole(at, "pricing.base", raw.get("base", 0))
    by_value: dict[str, dict[str, int]] = {}
    by_raw = raw.get("by_value", {})
    if not isinstance(by_raw, dict):
        raise ConfigError(f"{at}: pricing.by_value must be a table of fields")
    for fname, table in by_raw.items():
        where = f"{at}: pricing.by_value.{fname}"
        f = _priced_field(where, fname, inputs)
        allowed = [True, False] if f.type == "boolean" else list(f.enum or ())
        if f.type not in ("string", "integer", "boolean") or not allowed:
            raise ConfigError(
                f"{where}: a field priced by value must be a boolean, or a string or integer with an enum"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of value = credits")
        keys = [value_key(v) for v in allowed]
        for key in table:
            if key not in keys:
                raise ConfigError(f"{where}: {key!r} is not an allowed value of {fname}")
        for key in keys:
            if key not in table:
                raise ConfigError(f"{where}: value {key!r} has no price (every allowed value needs one)")
        by_value[fname] = {k: _whole(at, f"pricing.by_value.{fname}.{k}", table[k]) for k in keys}
    per_unit: dict[str, int] = {}
    per_raw = raw.get("per_unit", {})
    if not isinstance(per_raw, dict):
        raise ConfigError(f"{at}: pricing.per_unit must be a table of field = credits")
    for fname, credits in per_raw.items():
        where = f"{at}: pricing.per_unit.{fname}"
        f = _priced_field(where, fname, inputs)
        if fname in by_value:
            raise ConfigError(f"{where}: a field is priced by value or per unit, not both")
        if f.type != "integer" or f.minimum is None or f.maximum is None or f.minimum < 0:
            raise ConfigError(f"{where}: a field priced per unit must be an integer with minimum ≥ 0 and a maximum")
        per_unit[fname] = _whole(at, f"pricing.per_unit.{fname}", credits)
    return PriceRules(base=base, by_value=by_value, per_unit=per_unit)


def _priced_field(where: str, fname: str, inputs: Mapping[str, InputField]) -> InputField:
    f = inputs.get(fname)
    if f is None:
        raise ConfigError(f"{where}: {fname!r} is not one of the model's inputs")
    if f.default is None and not f.required:
        raise ConfigError(f"{where}: a priced field needs a default (or required = true)")
    return f


def _check_positive(at: str, rules: PriceRules, inputs: Mapping[str, InputField]) -> None:
    """The cheapest input must still cost something (a free job would be a generation given away)."""
    cheapest = rules.base
    cheapest += sum(min(t.values()) for t in rules.by_value.values())
    cheapest += sum(per * int(inputs[f].minimum or 0) for f, per in rules.per_unit.items())
    if cheapest < 1:
        raise ConfigError(f"{at}: the cheapest input would cost {cheapest} credits; every job must cost at least 1")


def _whole(at: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise ConfigError(f"{at}: {key} must be a whole number of credits ≥ 0")
    return value


def _positive_number(at: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{at}: {key} must be a positive number of seconds")
    return float(value)


def _bound(at: str, key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or abs(value) > MAX_INT:
        raise ConfigError(f"{at}: {key} must be {'an integer' if kind is int else 'a number'}")
    return value


def _count(at: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{at}: {key} must be a whole number ≥ 0")
    return value


def _is_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)


def _plain(value: float | None) -> float | int | None:
    """A bound as written: 1.0 shows as 1."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
