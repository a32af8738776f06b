"""Usage → cost in US dollars, from the price table in config/prices.toml."""

from __future__ import annotations

import math
import tomllib
from functools import cache
from typing import Any

from otto_farm.models import Usage
from otto_farm.resources import data_dir


@cache
def table() -> dict[str, Any]:
    """The price table, from the source tree's config/ or its copy inside an installed wheel."""
    return tomllib.loads((data_dir("config", "prices.toml") / "prices.toml").read_text())


def default_model() -> str:
    return str(table()["default_model"])


def cost_usd(model: str, usage: Usage) -> float:
    """What `usage` of `model` costs; a model missing from the table is priced as the default one."""
    t = table()
    price = t["models"].get(model) or t["models"][t["default_model"]]
    input_tokens = (
        usage.input_tokens
        + t["cache_read_multiplier"] * usage.cache_read_tokens
        + t["cache_write_multiplier"] * usage.cache_write_tokens
    )
    return round(float(input_tokens * price["input"] + usage.output_tokens * price["output"]) / 1e6, 6)


def count(value: Any) -> int:
    """A token count as an API or a CLI reported it: a non-negative integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def amount(value: Any) -> float:
    """A cost in dollars as a CLI reported it: a finite non-negative number, else 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok and value >= 0 else 0.0


def api_usage(model: str, u: Any) -> Usage:
    """The Messages API's usage block of one response as a Usage, with its cost."""
    usage = Usage(
        input_tokens=count(u.input_tokens),
        output_tokens=count(u.output_tokens),
        cache_read_tokens=count(u.cache_read_input_tokens),
        cache_write_tokens=count(u.cache_creation_input_tokens),
    )
    usage.cost_usd = cost_usd(model, usage)
    return usage
