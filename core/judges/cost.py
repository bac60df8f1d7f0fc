"""Prices for the token and cost ledger.

USD per million tokens (input, output) of OpenAI's public list prices for the models people use
as judges. Prices change: pass your own with ``--price-in/--price-out`` (or ``Pricing(...)``).
For a model not in the table (a vLLM server, a fine-tune) the cost is reported as unknown rather
than guessed. The Batch API is billed at half price.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.judges.base import Usage

# USD per 1M tokens (input, output), OpenAI list prices, standard tier.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Pricing:
    input_per_million: float
    output_per_million: float
    batch: bool = False  # Batch API: half price

    def cost(self, usage: Usage) -> float:
        usd = (
            usage.prompt_tokens * self.input_per_million
            + usage.completion_tokens * self.output_per_million
        ) / 1e6
        return usd * (BATCH_DISCOUNT if self.batch else 1.0)


def pricing_for(
    model: str,
    price_in: float | None = None,
    price_out: float | None = None,
    batch: bool = False,
) -> Pricing | None:
    """Explicit prices win; else the table; else None (cost unknown)."""
    if price_in is not None or price_out is not None:
        if price_in is None or price_out is None:
            raise ValueError("give both --price-in and --price-out (USD per million tokens)")
        return Pricing(price_in, price_out, batch)
    if model in PRICES_PER_MILLION:
        return Pricing(*PRICES_PER_MILLION[model], batch)
    return None
