"""The price list: models (cost, deadline) and tiers (monthly credits and limits), from a TOML file.

Loaded once at start by :func:`load`; a malformed file is a ConfigError naming CREDITQ_PRICING and the entry.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

KINDS = ("image", "video", "audio")


@dataclass(frozen=True, slots=True)
class Model:
    model: str
    kind: str
    family: str
    cost: int
    deadline_seconds: float
    typical_seconds: float
    # The model's name at the provider when it differs from ours (Suno's "V4_5" for "suno/v4-5"); "" = the same.
    provider_model: str = ""

    def __post_init__(self) -> None:
        if not self.provider_model:
            object.__setattr__(self, "provider_model", self.model)

    def public(self) -> dict[str, Any]:
        """The model as ``GET /v1/models`` shows it."""
        return {"model": self.model, "kind": self.kind, "family": self.family, "cost": self.cost}


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    monthly_credits: int
    daily_jobs: int  # 0: no limit
    concurrent_jobs: int  # 0: no limit
    cooldown_seconds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pricing:
    models: dict[str, Model]
    tiers: dict[str, Tier]

    def model(self, name: str) -> Model | None:
        return self.models.get(name)

    def tier(self, name: str) -> Tier:
        """The tier by name; an account whose tier left the price list is treated as ``free``."""
        return self.tiers.get(name) or self.tiers["free"]


def load(path: Path) -> Pricing:
    """Parse and validate the pricing file. Raises ConfigError naming CREDITQ_PRICING and the bad entry."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"CREDITQ_PRICING: cannot read {path}: {e}") from None
    models: dict[str, Model] = {}
    for i, m in enumerate(data.get("models", [])):
        try:
            model = Model(
                model=str(m["model"]),
                kind=str(m["kind"]),
                family=str(m["family"]),
                cost=int(m["cost"]),
                deadline_seconds=float(m["deadline_seconds"]),
                typical_seconds=float(m.get("typical_seconds", 10)),
                provider_model=str(m.get("provider_model", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"CREDITQ_PRICING: models[{i}] is missing or has a bad {e}") from None
        families = _families()
        if model.kind not in KINDS or model.family not in families or model.cost <= 0 or model.deadline_seconds <= 0:
            raise ConfigError(
                f"CREDITQ_PRICING: models[{i}] ({model.model}) needs kind in {KINDS}, family in {families}, "
                "positive cost and deadline_seconds"
            )
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
            )
        except (TypeError, ValueError) as e:
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
