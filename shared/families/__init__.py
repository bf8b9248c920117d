"""Provider family adapters: one module per family, each defining ``FAMILY`` (a :class:`~shared.families.base.
Family`). The registry finds them by scanning this package, so adding a family (Runway, 4o Image...) is one new
module here plus its models in the price list. Families: ``jobs`` (the generic jobs API), ``veo`` (Veo 3),
``suno`` (music).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from shared.families.base import (
    CallbackHint,
    CreateRequest,
    ErrorClass,
    Family,
    ProviderStatus,
    State,
)

__all__ = ["CallbackHint", "CreateRequest", "ErrorClass", "Family", "ProviderStatus", "State", "get", "names"]


@cache
def _registry() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family) and family.name:
            found[family.name] = family
    return found


def names() -> tuple[str, ...]:
    """The families creditq has an adapter for, sorted."""
    return tuple(sorted(_registry()))


def get(name: str) -> Family:
    """The adapter of family ``name``. Raises KeyError for a family without one (the price list is checked
    against :func:`names` at load, so a task's family always has one)."""
    return _registry()[name]
