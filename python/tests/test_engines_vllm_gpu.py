"""vLLM's FusedMoEKernel through epd's GPU executor (label engines;gpu; run by tools on the GPU machine).

- test_workers_on_one_gpu: 3 worker processes on GPU 0 (test_engines_vllm_rank.py with device cuda:0):
  both layouts (rank_major with vLLM's TritonExperts, expert_major with NaiveBatchedExperts), random and
  skewed routing, ranks with 0 tokens, both slots in flight, against the fp32 reference.
- test_cuda_graph_replay_with_changing_counts: one rank (world 1); FusedMoEKernel.apply captured once in a
  CUDA graph at max_tokens rows, replayed with a different number of real rows each time (the rest carry
  -1 ids, so epd's device-side counts change per replay), each replay checked against the reference.
- test_vllm_modular_kernel_sweep: vLLM's own tests/kernels/moe/test_modular_kernel_combinations.py
  (single-GPU cases) from the sdist at $EPD_VLLM_SDIST, with maybe_make_prepare_finalize returning epd's
  prepare/finalize (test_engines_vllm_mk_patch.py), which must run in at least one kernel; skipped without
  $EPD_VLLM_SDIST; EPD_MK_SWEEP_QUANT=none limits it to the unquantized cases.
Skips, saying why, without a GPU, vLLM or an epd built with CUDA.
"""
from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (python/tests/gpu_engine_run.sh installs it offline)", allow_module_level=True)
import epd  # noqa: E402
from conftest import run_workers  # noqa: E402

if not epd.ops.available():
    pytest.skip(f"the epd torch ops extension is not available: {epd.ops.load_error()}", allow_module_level=True)

HERE = Path(__file__).resolve().parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(HERE)) if p)
    return env


def _gpu_capable(daemon):
    with epd.connect(daemon.socket) as c:
        if not c.info.capabilities & epd.Capability.GPU_EXECUTOR:
            pytest.skip("this epd serves no GPU placements (built without CUDA, or no driver)")


def test_workers_on_one_gpu(daemon):
    _gpu_capable(daemon)
    seed = random.randrange(1 << 30)
    world = 3
    argvs = [[sys.executable, str(HERE / "test_engines_vllm_rank.py"), daemon.socket, str(r), str(world), str(seed),
              "cuda:0"] for r in range(world)]
    results = run_workers(argvs, 600, env=_env())
    bad = [(r, rc, out) for r, (rc, out) in enumerate(results) if rc != 0 or f"OK rank {r}" not in out]
    assert not bad, f"seed {seed}:\n" + "\n".join(f"--- rank {r} (exit {rc}):\n{out[-4000:]}" for r, rc, out in bad)


def test_cuda_graph_replay_with_changing_counts(daemon):
    _gpu_capable(daemon)
    import test_engines_vllm_rank as rk
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    from epd.vllm import testing
    from epd.vllm._link import Link
    testing.init_vllm_workspace("cuda:0")
    link = Link.attach(0, [(0, 0)], daemon.socket)
    try:
        for layout in ("rank_major", "expert_major"):
            kernel, expert_map, first, local = rk.build_kernel(layout, link, 0, 1, "cuda:0", torch.bfloat16)
            w1, w2 = rk.weights(7, torch.bfloat16)
            w1d, w2d = w1.cuda(), w2.cuda()
            x, ids, w = rk.inputs(7, 0, 0, 0, rk.MAX_TOKENS, "random", torch.bfloat16, "cuda:0")

            def apply():
                return kernel.apply(x, w1d, w2d, w, ids, activation=MoEActivation.SILU, global_num_experts=rk.E,
                                    expert_map=expert_map, apply_router_weight_on_input=False)
            apply()  # warm-up: joins the group, compiles Triton kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = apply()
            for step, n in enumerate((rk.MAX_TOKENS, 3, 0, 7, 1, rk.MAX_TOKENS)):
                nx, nids, nw = rk.inputs(7, step + 1, 0, 0, rk.MAX_TOKENS, "random", torch.bfloat16, "cuda:0")
                nids[n:] = -1  # rows past n are padding: epd dispatches nothing for them
                x.copy_(nx), ids.copy_(nids), w.copy_(nw)
                graph.replay()
                torch.cuda.synchronize()
                link.groups()[-1].status()  # a failed replay (bad id, lost peer) raises here
                ref = testing.reference_moe(nx[:n].cpu(), nids[:n].cpu(), nw[:n].cpu(), w1, w2)
                rk.check(out[:n], ref, f"{layout} graph replay {step} with {n} real rows")
    finally:
        Link.detach()


def test_vllm_modular_kernel_sweep(daemon):
    _gpu_capable(daemon)
    sdist = os.environ.get("EPD_VLLM_SDIST")
    if not sdist:
        pytest.skip("EPD_VLLM_SDIST (the unpacked vllm-0.34.0 sdist) is not set")
    env = _env()
    env.update(EPD_SOCKET=daemon.socket, PYTHONPATH=os.pathsep.join((str(HERE), sdist, env["PYTHONPATH"])))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                        "test_engines_vllm_mk_patch", "--noconftest", "-k", "singlegpu",
                        f"{sdist}/tests/kernels/moe/test_modular_kernel_combinations.py"],
                       env=env, capture_output=True, text=True, timeout=1500)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    used = re.search(r"epd prepare/finalize used in (\d+) kernels", r.stdout + r.stderr)
    assert used and int(used.group(1)) > 0, tail
    print(used.group(0))
