"""torch.ops.epd on GPU groups: several worker processes on GPU 0 through a real daemon (label gpu).

Skips cleanly (with the reason) without torch, without the ops extension, without
a CUDA device, or with an epd built without CUDA. Run: pytest python/tests -m gpu
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
from conftest import require_torch_ops, run_workers  # noqa: E402

torch = require_torch_ops()
import epd  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch", allow_module_level=True)

HERE = Path(__file__).resolve().parent
WORLD = int(os.environ.get("EPD_GPU_TEST_WORLD", "4"))


@pytest.fixture
def gpu_daemon(daemon):
    with epd.connect(daemon.socket) as c:
        if epd.Capability.GPU_EXECUTOR not in c.info.capabilities:
            pytest.skip("this epd serves no GPU groups (built without CUDA, or no driver)")
    return daemon


def _run(daemon, mode, timeout_s=300):
    seed = int(os.environ.get("EPD_TEST_SEED", random.randrange(1 << 30)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    argvs = [[sys.executable, str(HERE / "gpu_worker.py"), daemon.socket, str(r), str(WORLD), str(seed), mode]
             for r in range(WORLD)]
    results = run_workers(argvs, timeout_s=timeout_s, env=env)
    bad = [(r, rc, out) for r, (rc, out) in enumerate(results) if rc != 0]
    assert not bad, f"seed {seed}:\n" + "\n".join(f"rank {r} exit {rc}:\n{out}" for r, rc, out in bad) + \
        f"\nepd log:\n{daemon.log()[-4000:]}"


def test_gpu_ops_bf16_fp8_both_layouts(gpu_daemon):
    _run(gpu_daemon, "eager")


def test_gpu_ops_cuda_graph_replay_with_device_counts(gpu_daemon):
    _run(gpu_daemon, "graph")


def test_gpu_bad_expert_id_then_next_call_works(gpu_daemon):
    _run(gpu_daemon, "badid")


def test_gpu_views_are_zero_copy_device_tensors(gpu_daemon):
    with epd.connect(gpu_daemon.socket) as c:
        g = c.join(name="views", generation=1, world_size=1, rank=0, placement=[(0, 0)], num_experts=4, top_k=2,
                   hidden=256, dtype="bf16", dispatch_quant="fp8", max_tokens_per_rank=8, layout="expert_major",
                   timeout_ms=10000)
        v = g.views(1)
        assert v.recv_x.is_cuda and v.recv_x.dtype == torch.float8_e4m3fn and v.recv_x.shape == (v.capacity_rows, 256)
        assert v.recv_scales.shape == (v.capacity_rows, 2) and v.recv_scales.dtype == torch.float32
        assert v.recv_ids.shape == (v.capacity_rows, 1) and v.recv_ids.dtype == torch.int32
        assert v.recv_counts.shape == (4,) and v.recv_total.shape == (1,)
        assert v.combine_in.dtype == torch.bfloat16 and v.combine_out.shape == (8, 256)
        assert v.send_x.shape == (8, 256) and v.send_ids.shape == (8, 2) and v.send_weights.dtype == torch.float32
        assert v.rows_per_expert == 8 and v.capacity_rows == 4 * 8
        assert g.views(1).recv_x.data_ptr() == v.recv_x.data_ptr()
        g.leave()
