"""The python step of ``daily_sales.py``: the executor imports it as ``examples.code.sales_steps``
from its working directory (the checkout, as with ``make run``)."""

from __future__ import annotations

from typing import Any


def load(params: dict[str, Any]) -> dict[str, Any]:
    """Pretend to load the extracted rows; the outputs say how many and for which day."""
    rows = int(params["rows"])
    return {"loaded": rows, "day": str(params["day"])}
