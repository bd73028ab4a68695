"""The epd backend names for vLLM and how $VLLM_EPD_BACKEND selects one (no vLLM import here, so the
plugin entry point costs nothing when epd is not selected). Thread-safety: pure functions."""
from __future__ import annotations

import os

import epd

ENV_BACKEND = "VLLM_EPD_BACKEND"
LAYOUTS = {"epd_high_throughput": "rank_major", "epd_low_latency": "expert_major"}
_ALIASES = {"high_throughput": "epd_high_throughput", "rank_major": "epd_high_throughput",
            "low_latency": "epd_low_latency", "expert_major": "epd_low_latency"}


def selected_backend() -> str | None:
    """The epd backend named by $VLLM_EPD_BACKEND (None when unset or empty); a wrong name raises."""
    raw = os.environ.get(ENV_BACKEND, "").strip()
    if not raw:
        return None
    name = _ALIASES.get(raw, raw)
    if name not in LAYOUTS:
        raise epd.EpdError(epd.Status.INVALID_ARGUMENT,
                           f"{ENV_BACKEND} = {raw!r} is not one of {', '.join(sorted(LAYOUTS))}")
    return name
