"""What a turn cost: tokens by kind, priced per model.

The prices are an ESTIMATE for the footer and the Conversation status, not a bill. They are Anthropic's
list prices in US dollars per million tokens, as published on https://platform.claude.com/docs/en/about-claude/pricing
(checked when this table was written): base input, 5-minute cache writes (1.25x input), cache reads (0.1x
input) and output. Batch discounts, the 1-hour cache, regional surcharges and long-context rates are not
modelled. A model missing from the table is priced as :data:`FALLBACK_MODEL`, and the cost is still called
an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from peerbot.session.format import TokenUsage

PER_MILLION: Final = 1_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


#: Longest matching prefix wins, so dated ids (``claude-sonnet-4-5-20250929``) find their family.
PRICES: Final[dict[str, Price]] = {
    "claude-opus-4-5": Price(input=5.00, output=25.00, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-1": Price(input=15.00, output=75.00, cache_write=18.75, cache_read=1.50),
    "claude-opus-4-0": Price(input=15.00, output=75.00, cache_write=18.75, cache_read=1.50),
    "claude-opus-4": Price(input=15.00, output=75.00, cache_write=18.75, cache_read=1.50),
    "claude-sonnet-4-5": Price(input=3.00, output=15.00, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-4": Price(input=3.00, output=15.00, cache_write=3.75, cache_read=0.30),
    "claude-3-7-sonnet": Price(input=3.00, output=15.00, cache_write=3.75, cache_read=0.30),
    "claude-haiku-4-5": Price(input=1.00, output=5.00, cache_write=1.25, cache_read=0.10),
    "claude-3-5-haiku": Price(input=0.80, output=4.00, cache_write=1.00, cache_read=0.08),
    "claude-3-haiku": Price(input=0.25, output=1.25, cache_write=0.30, cache_read=0.03),
}
#: Unknown models are priced like this one (Peerbot's default model).
FALLBACK_MODEL: Final = "claude-sonnet-4-5"


def price_of(model: str) -> Price:
    """The price of ``model`` (its longest known prefix), or the fallback's."""
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    return PRICES[max(matches, key=len)] if matches else PRICES[FALLBACK_MODEL]


def cost_usd(model: str, usage: TokenUsage) -> float:
    """The estimated cost of ``usage`` on ``model``."""
    price = price_of(model)
    return (
        usage.input * price.input
        + usage.output * price.output
        + usage.cache_write * price.cache_write
        + usage.cache_read * price.cache_read
    ) / PER_MILLION


class Accounting:
    """Tokens and estimated cost of one turn, per model."""

    def __init__(self) -> None:
        self.by_model: dict[str, TokenUsage] = {}

    def add(self, model: str, usage: TokenUsage) -> None:
        self.by_model[model] = self.by_model.get(model, TokenUsage()) + usage

    @property
    def total(self) -> TokenUsage:
        total = TokenUsage()
        for usage in self.by_model.values():
            total = total + usage
        return total

    @property
    def cost_usd(self) -> float:
        return sum(cost_usd(model, usage) for model, usage in self.by_model.items())

    @property
    def cache_hit_rate(self) -> float | None:
        """Share of prompt tokens read from the cache; ``None`` before any request."""
        total = self.total
        prompt = total.input + total.cache_read + total.cache_write
        return total.cache_read / prompt if prompt else None
