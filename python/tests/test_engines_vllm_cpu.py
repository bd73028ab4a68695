"""vLLM's own FusedMoEKernel through a real epd (host executor), 3 worker processes.

Each worker (test_engines_vllm_rank.py) builds vLLM 0.34's FusedMoEKernel with
the epd prepare/finalize of both layouts (expert_major with vLLM's
NaiveBatchedExperts; rank_major with a plain-torch PaddedStandard experts
class, since vLLM's PaddedStandard experts need Triton on a GPU), runs random
and skewed routing, ranks with 0 tokens, both slots in flight at once, a call
above capacity, and fp8 block-128 dispatch (expert_major), and compares every output with a plain fp32 reference.
Also: the plugin's backend selection and its warnings, in-process.

Skips, saying why, when torch, vLLM or the epd ops extension is missing.
"""
from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import pytest

from conftest import require_torch_ops, run_workers  # noqa: E402

torch = require_torch_ops("vLLM", "vllm", "vllm==0.34.0")
import epd  # noqa: E402

WORLD = 3
HERE = Path(__file__).resolve().parent
WORKER_DEADLINE_S = 480  # vLLM's import alone takes 30-60 s per process on a loaded 2-core machine


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE)) if p)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def test_fused_moe_kernel_through_epd(daemon):
    seed = random.randrange(1 << 30)
    argvs = [[sys.executable, str(HERE / "test_engines_vllm_rank.py"), daemon.socket, str(r), str(WORLD), str(seed)]
             for r in range(WORLD)]
    results = run_workers(argvs, WORKER_DEADLINE_S, env=_env())
    bad = [(r, rc, out) for r, (rc, out) in enumerate(results) if rc != 0 or f"OK rank {r}" not in out]
    assert not bad, f"seed {seed}:\n" + "\n".join(f"--- rank {r} (exit {rc}):\n{out[-4000:]}" for r, rc, out in bad)


def test_backend_names(monkeypatch):
    vllm_epd = pytest.importorskip("epd.vllm", reason="vLLM does not import here")
    monkeypatch.delenv("VLLM_EPD_BACKEND", raising=False)
    assert vllm_epd.selected_backend() is None
    for raw, name in (("epd_high_throughput", "epd_high_throughput"), ("low_latency", "epd_low_latency"),
                      ("rank_major", "epd_high_throughput"), ("expert_major", "epd_low_latency")):
        monkeypatch.setenv("VLLM_EPD_BACKEND", raw)
        assert vllm_epd.selected_backend() == name
    monkeypatch.setenv("VLLM_EPD_BACKEND", "deepep")
    with pytest.raises(epd.EpdError, match="'deepep' is not one of epd_high_throughput, epd_low_latency"):
        vllm_epd.selected_backend()


def test_plugin_wraps_and_warns_for_tp_only_ep(monkeypatch, caplog):
    """With VLLM_EPD_BACKEND set, register() wraps vLLM's factory; a layer with EP but no DP (TP-only EP)
    gets vLLM's own prepare/finalize and a warning saying epd is not used."""
    pytest.importorskip("epd.vllm", reason="vLLM does not import here")
    from vllm.model_executor.layers.fused_moe import all2all_utils
    from vllm.model_executor.layers.fused_moe.config import FusedMoEParallelConfig

    from epd.vllm import plugin, testing
    monkeypatch.setenv("VLLM_EPD_BACKEND", "epd_low_latency")
    monkeypatch.setitem(plugin._state, "registered", False)
    original = all2all_utils.maybe_make_prepare_finalize
    monkeypatch.setattr(all2all_utils, "maybe_make_prepare_finalize", original)
    from vllm.distributed.device_communicators import cuda_communicator as cc
    monkeypatch.setattr(cc.CudaCommunicator, "__init__", cc.CudaCommunicator.__init__)
    plugin.register()
    wrapped = all2all_utils.maybe_make_prepare_finalize
    assert wrapped is not original and getattr(wrapped, "_epd_wrapped", False)
    assert getattr(cc.CudaCommunicator.__init__, "_epd_wrapped", False)
    moe = testing.moe_config(num_experts=8, num_local_experts=4, top_k=2, hidden=128, intermediate=64,
                             dtype=torch.bfloat16, max_tokens=16, device="cpu")
    pc = FusedMoEParallelConfig.make_no_parallel()
    object.__setattr__(pc, "use_ep", True)
    object.__setattr__(moe, "moe_parallel_config", pc)
    with caplog.at_level(logging.WARNING, logger="epd.vllm"):
        pf = wrapped(moe, None, allow_new_interface=True)
    assert "epd" not in type(pf).__module__
    assert any("TP-only EP" in r.getMessage() and "will NOT be used" in r.getMessage() for r in caplog.records)


def test_wrong_activation_format_warns(caplog):
    """rank_major (PaddedStandard) with batched experts: a warning naming both and the other backend;
    vLLM's FusedMoEKernel then refuses the pair."""
    pytest.importorskip("epd.vllm", reason="vLLM does not import here")
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.config import FusedMoEQuantConfig
    from vllm.model_executor.layers.fused_moe.experts.fused_batched_moe import NaiveBatchedExperts

    from epd.vllm import EpdRankMajorPrepareAndFinalize, testing
    cfg = testing.moe_config(num_experts=8, num_local_experts=4, top_k=2, hidden=128, intermediate=64,
                             dtype=torch.bfloat16, max_tokens=16, device="cpu")
    experts = NaiveBatchedExperts(cfg, FusedMoEQuantConfig.make(), max_num_tokens=16, num_dispatchers=2)
    pf = EpdRankMajorPrepareAndFinalize(None, world_size=2, rank=0, num_experts=8, top_k=2, max_tokens_per_rank=16,
                                        num_local_experts=4)
    with caplog.at_level(logging.WARNING, logger="epd.vllm"), pytest.raises(AssertionError):
        mk.FusedMoEKernel(pf, experts)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "NaiveBatchedExperts" in msg and "VLLM_EPD_BACKEND=epd_low_latency" in msg, msg
