"""The host-executor data path through torch.ops.epd with 4 worker processes and a real daemon.

Each worker (host_worker.py) checks its received rows and its combine output
against reference.py; this test starts them, bounds them by a deadline and
reports every rank's verdict. Skips (with the reason) when torch or the ops
extension is missing.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from conftest import require_torch_ops, run_workers  # noqa: E402

torch = require_torch_ops()
import epd  # noqa: E402

WORLD = 4
HERE = Path(__file__).resolve().parent


def test_ops_are_registered_with_schemas():
    for name in ("dispatch", "dispatch_wait", "combine", "combine_wait"):
        op = getattr(torch.ops.epd, name).default
        assert op._schema.is_mutable, name  # the token is declared mutated: torch.compile keeps the call
    with torch.device("meta"):
        tok = torch.zeros(1, dtype=torch.int32)
        x = torch.empty(4, 8)
        ids = torch.empty(4, 2, dtype=torch.int32)
        torch.ops.epd.dispatch(tok, 1, 0, x, ids, None, None, 4)  # Meta: no C call, no error
        torch.ops.epd.combine_wait(tok, 1, 0, torch.empty(4, 8), 0)


def test_host_data_path_four_processes(daemon):
    seed = int(os.environ.get("EPD_TEST_SEED", random.randrange(1 << 30)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    argvs = [[sys.executable, str(HERE / "host_worker.py"), daemon.socket, str(r), str(WORLD), str(seed)]
             for r in range(WORLD)]
    results = run_workers(argvs, timeout_s=240, env=env)
    bad = [(r, rc, out) for r, (rc, out) in enumerate(results) if rc != 0]
    assert not bad, f"seed {seed}:\n" + "\n".join(f"rank {r} exit {rc}:\n{out}" for r, rc, out in bad) + \
        f"\nepd log:\n{daemon.log()[-4000:]}"


def test_host_op_errors_are_epd_errors(daemon):
    with epd.connect(daemon.socket) as c:
        g = c.join(name="err", generation=1, world_size=1, rank=0, num_experts=4, top_k=2, hidden=8, dtype="fp32",
                   max_tokens_per_rank=4, timeout_ms=10000)
        x, w = torch.randn(2, 8), torch.rand(2, 2)
        with pytest.raises(epd.EpdError) as e:
            epd.dispatch(g, 0, x, torch.tensor([[0, 4], [1, 2]]), w)
        assert e.value.status == epd.Status.EXPERT_ID_OUT_OF_RANGE and "= 4" in e.value.message
        with pytest.raises(epd.EpdError) as e:
            epd.dispatch(g, 0, torch.randn(5, 8), torch.zeros(5, 2, dtype=torch.int64), None)
        assert e.value.status == epd.Status.CAPACITY_EXCEEDED and "n_tokens = 5" in e.value.message
        with pytest.raises(epd.EpdError) as e:
            epd.combine(g, 0, "already_applied")
        assert e.value.status == epd.Status.NO_DISPATCH
        with pytest.raises(epd.EpdError) as e:
            epd.dispatch(g, 0, x, torch.tensor([[0, 1], [1, 2]], dtype=torch.int16), w)
        assert e.value.status == epd.Status.INVALID_ARGUMENT and "int32 or int64" in e.value.message
        with pytest.raises(epd.EpdError) as e:
            epd.dispatch(g, 0, x, torch.tensor([[0, 1], [1, 2]]), w.double())
        assert e.value.status == epd.Status.INVALID_ARGUMENT and "float32" in e.value.message
        # the group still works after refused calls
        ids = torch.tensor([[0, 1], [3, -1]])
        epd.dispatch(g, 0, x, ids, w)
        v = epd.dispatch_wait(g, 0)
        assert v.recv_x.dtype == torch.float32 and v.recv_x.shape == (v.capacity_rows, 8)
        assert v.recv_ids.shape == (v.capacity_rows, 2) and v.recv_ids.dtype == torch.int32
        assert v.recv_src.shape == (v.capacity_rows, 2) and v.recv_counts.shape == (4,)
        assert v.combine_in.shape == (v.capacity_rows, 8) and v.recv_scales is None
        assert v.send_x is None and v.combine_out is None and v.recv_total is None
        assert v.recv_x.data_ptr() == epd.dispatch_wait(g, 0).recv_x.data_ptr()  # zero-copy, address-stable
        v.combine_in[: v.total_rows] = v.recv_x[: v.total_rows]
        epd.combine(g, 0, "ones")
        out = epd.combine_wait(g, 0, out=torch.empty(2, 8))
        assert torch.equal(out, x)
        g.leave()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_ops_under_torch_compile_run_in_order_and_are_kept(daemon, backend):
    """fullgraph torch.compile traces the ops (schemas + fake kernels), keeps calls whose results are
    unused (the mutated token) and runs them in program order."""
    with epd.connect(daemon.socket) as c:
        g = c.join(name="compile", generation=1, world_size=1, rank=0, num_experts=4, top_k=2, hidden=8,
                   dtype="fp32", max_tokens_per_rank=4, timeout_ms=10000)
        tok, h = g.token(0), g.handle

        def round_trip(x, ids, w, out):
            torch.ops.epd.dispatch(tok, h, 0, x, ids, w, None, x.shape[0])
            torch.ops.epd.dispatch_wait(tok, h, 0, 0)
            torch.ops.epd.combine(tok, h, 0, int(epd.WeightMode.ONES), x * 2 + 1, x.shape[0])
            torch.ops.epd.combine_wait(tok, h, 0, out, 0)
            return out + 0

        def dispatch_only(x, ids, w):  # nothing uses what the ops do
            torch.ops.epd.dispatch(tok, h, 0, x, ids, w, None, x.shape[0])
            torch.ops.epd.dispatch_wait(tok, h, 0, 0)
            return x + 1

        rt = torch.compile(round_trip, backend=backend, fullgraph=True)
        only = torch.compile(dispatch_only, backend=backend, fullgraph=True)
        for i in range(3):
            x = torch.randn(3, 8)
            ids = torch.tensor([[0, 1], [2, -1], [3, 1]])  # every token has an expert: row t is token t
            y = rt(x, ids, torch.rand(3, 2), torch.full((3, 8), float("nan")))
            assert torch.allclose(y, x * 2 + 1), i
            assert torch.equal(only(x, ids, torch.rand(3, 2)), x + 1)
            v = g.views(0)  # the slot holds a finished dispatch: the calls were not dropped
            assert v.total_rows == 3 and torch.equal(v.recv_x[:3], x)
            epd.combine(g, 0, "ones", x, rows=3)
            assert torch.equal(epd.combine_wait(g, 0, out=torch.empty(3, 8)), x)
        g.leave()


def test_gpu_view_shapes_and_addresses_from_the_c_struct():
    """The GPU views' shapes, dtypes and addresses come from epd_gpu_views_t as documented (checked on
    the CPU: the struct is filled with addresses of host memory standing in for device memory)."""
    from epd import _lib, group as G
    spec = dict(name="v", rank=0, world_size=2, slots=2, placement=[(0, 0), (0, 0)], dtype=epd.DType.BF16,
                dispatch_quant=epd.Quant.FP8_E4M3_BLOCK128, layout=epd.Layout.EXPERT_MAJOR, max_tokens_per_rank=8,
                top_k=2, hidden=256)
    g = G.Group(None, 1, spec)
    g._handle = None  # never passed to the library
    arena = torch.zeros(12 << 16, dtype=torch.uint8)
    names = ["send_x", "send_ids", "send_weights", "recv_total", "recv_counts", "recv_x", "recv_scales", "recv_ids",
             "recv_weights", "recv_src", "combine_in", "combine_out"]
    r = _lib.GpuViews()
    for i, n in enumerate(names):
        setattr(r, n, arena.data_ptr() + (i << 16))
    r.capacity_rows, r.ids_per_row, r.num_local_experts = 4 * 16, 1, 4
    v = g._make(torch, lambda a, n: G._host_bytes(torch, a, n), r, None, True)
    want = {"send_x": ((8, 256), torch.bfloat16), "send_ids": ((8, 2), torch.int32),
            "send_weights": ((8, 2), torch.float32), "recv_total": ((1,), torch.int32),
            "recv_counts": ((4,), torch.int32), "recv_x": ((64, 256), torch.float8_e4m3fn),
            "recv_scales": ((64, 2), torch.float32), "recv_ids": ((64, 1), torch.int32),
            "recv_weights": ((64, 1), torch.float32), "recv_src": ((64, 2), torch.int32),
            "combine_in": ((64, 256), torch.bfloat16), "combine_out": ((8, 256), torch.bfloat16)}
    for i, n in enumerate(names):
        t = getattr(v, n)
        assert (tuple(t.shape), t.dtype) == want[n], n
        assert t.data_ptr() == arena.data_ptr() + (i << 16), n
    assert v.rows_per_expert == 2 * 8 and v.total_rows is None
