"""epd as a vLLM all-to-all backend (vLLM 0.34), out of tree.

Switch it on with the environment variable VLLM_EPD_BACKEND (epd_high_throughput:
rank_major, vLLM's PaddedStandard format; epd_low_latency: expert_major, vLLM's
BatchedExperts format) in every vLLM process; the `vllm.general_plugins` entry
point `epd` (epd.vllm.plugin:register) installs the backend. See docs/ENGINES.md.

The names below load lazily: importing epd.vllm (or its engine-neutral
epd.vllm._link, which the SGLang dispatcher shares) does not import vLLM.
"""
import importlib

_EXPORTS = {
    "BACKENDS": "manager", "EpdAll2AllManager": "manager", "make_prepare_finalize": "manager",
    "ENV_BACKEND": "_names", "selected_backend": "_names", "register": "plugin",
    "EpdExpertMajorPrepareAndFinalize": "prepare_finalize", "EpdRankMajorPrepareAndFinalize": "prepare_finalize",
    "current_slot": "prepare_finalize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'epd.vllm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
