"""epd.vllm.testing.install_standins(): the plain-torch stand-ins for vLLM 0.34's compiled MoE ops
(label engines; needs torch only, not vLLM, not epd's daemon or ops extension).

- _moe_C::moe_align_block_size and _moe_C::moe_sum, as registered in torch.ops and as the Python
  functions, against brute-force oracles written here in plain Python loops from vLLM's CUDA kernels
  (csrc/moe/moe_align_sum_kernels.cu): random ids with -1, ids >= num_experts and (int64) ids that
  wrap when read as a 32-bit int; several block sizes and expert counts, both alignment kernels
  (small batch: exact order; the other: any order within an expert, as its atomics give); with
  and without expert_map and scatter_idx; moe_sum in fp32/bf16/fp16, with and without the pad-aware
  skip, NaN in skipped slots, strided input. On CUDA too where there is a GPU, and in a CUDA graph.
- The stand-in module for vllm._C_stable_libtorch that python/tests/gpu_engine_run.sh writes, and
  the empty module, in child processes with a fake vllm package: no recursion when install_standins()
  runs inside that import, a compiled file that fails to load, and an op already defined is left alone.
"""
from __future__ import annotations

import importlib.machinery
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (python/requirements-test.txt)")
from epd.vllm import testing  # noqa: E402  (needs torch only)

HERE = Path(__file__).resolve().parent
CUDA_WARP = 32
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]


@pytest.fixture(scope="module")
def ops():
    testing.install_standins()
    return {"align": torch.ops._moe_C.moe_align_block_size, "sum": torch.ops._moe_C.moe_sum}


@pytest.fixture(params=["torch.ops", "function"])
def impl(request, ops):
    """The registered op (where this process stands in for it) and the stand-in function itself."""
    if request.param == "function":
        return {"align": testing.moe_align_block_size_standin, "sum": testing.moe_sum_standin}
    if not {"_moe_C::moe_align_block_size", "_moe_C::moe_sum"} <= testing._installed:
        pytest.skip("vLLM's compiled _moe_C ops are loaded in this process: the stand-ins are not registered")
    return ops


# ---- the oracles: plain Python, following the CUDA kernels --------------------------------------------

def as_int32(v):
    """What `int expert_id = topk_ids[i]` reads from an integer of any width."""
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def oracle_align(ids, num_experts, block_size, expert_map, size, blocks):
    """ids: flat list. Returns local ids, per-expert counts, run starts, total, sorted ids (small-batch
    kernel order, or None for the atomic kernel), expert_ids for `blocks` blocks, scatter_idx."""
    n = len(ids)
    local = []
    for v in ids:
        e = as_int32(v)
        if e < 0 or e >= num_experts:
            local.append(-1)
        elif expert_map is not None:
            local.append(expert_map[e])
        else:
            local.append(e)
    counts = [0] * num_experts
    for e in local:
        if e != -1:
            counts[e] += 1
    starts, pos = [], 0
    for e in range(num_experts):
        starts.append(pos)
        pos += (counts[e] + block_size - 1) // block_size * block_size
    total = pos
    eids = [-1] * blocks
    for e in range(num_experts):
        p = starts[e]
        while p < starts[e] + (counts[e] + block_size - 1) // block_size * block_size:
            eids[p // block_size] = e
            p += block_size
    sorted_ids = None
    if n < 1024 and num_experts <= 64:  # one thread per `stride` rows; ranks by thread, then row
        stride = max(num_experts, CUDA_WARP)
        cnt = [[0] * num_experts for _ in range(stride + 1)]
        for t in range(stride):
            for i in range(t, n, stride):
                if local[i] != -1:
                    cnt[t + 1][local[i]] += 1
        for t in range(1, stride + 1):
            for e in range(num_experts):
                cnt[t][e] += cnt[t - 1][e]
        sorted_ids = [n] * size
        for t in range(stride):
            for i in range(t, n, stride):
                e = local[i]
                if e != -1:
                    sorted_ids[starts[e] + cnt[t][e]] = i
                    cnt[t][e] += 1
    scatter = [i if local[i] != -1 else -1 for i in range(n)]
    return local, counts, starts, total, sorted_ids, eids, scatter


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def add_f32(a, b):
    """a + b in IEEE single: exact in double first (asserted), then rounded once."""
    s = a + b
    big, small = (a, b) if abs(a) >= abs(b) else (b, a)
    assert s - big == small or s != s, "the double sum is not exact: this oracle would round twice"
    return f32(s)


def to_dtype_bits(x, dtype):
    """The bits of fp32 value x cast to dtype as CUDA's static_cast does (round to nearest even)."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    if dtype == torch.float32:
        return bits
    if dtype == torch.bfloat16:
        if x != x:
            return 0x7FC0 | ((bits >> 16) & 0x8000)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    return struct.unpack("<H", struct.pack("<e", x))[0]  # float16


def bits_of(t):
    t = t.cpu().contiguous()
    if t.dtype == torch.float32:
        return [b & 0xFFFFFFFF for b in t.view(torch.int32).reshape(-1).tolist()]
    return [b & 0xFFFF for b in t.view(torch.int16).reshape(-1).tolist()]


def oracle_sum(x, ids, expert_map):
    """x: [tokens][topk][d] Python floats; ids: [tokens][topk] or None."""
    out = []
    for t, row in enumerate(x):
        for j in range(len(row[0]) if row else 0):
            acc = 0.0
            for k in range(len(row)):
                if ids is not None:
                    e = ids[t][k]
                    if e < 0 or (expert_map is not None and (e >= len(expert_map) or expert_map[e] < 0)):
                        continue
                acc = add_f32(acc, row[k][j])
            out.append(acc)
    return out


# ---- moe_align_block_size ------------------------------------------------------------------------------

def random_ids(rng, n, num_experts, dtype):
    ids = []
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            ids.append(-1)
        elif r < 0.12:
            ids.append(num_experts + rng.randrange(3))
        elif r < 0.14 and dtype == torch.int64:
            ids.append((1 << 32) + rng.randrange(num_experts))  # read as a 32-bit int: a valid expert
        else:
            ids.append(rng.randrange(num_experts))
    return ids


def random_map(rng, num_experts):
    owned = sorted(rng.sample(range(num_experts), max(1, num_experts // 3)))
    local = list(range(len(owned)))
    rng.shuffle(local)
    m = [-1] * num_experts
    for g, l in zip(owned, local):
        m[g] = l
    return m


def buffer_sizes(n, num_experts, block_size, extra):
    """vLLM's wrapper sizes (vllm/model_executor/layers/fused_moe/moe_align_block_size.py), or larger."""
    size = n + num_experts * (block_size - 1)
    if extra == "pad":
        size = (size + block_size - 1) // block_size * block_size
    if n < num_experts:
        size = min(n * block_size, size)
    blocks = (size + block_size - 1) // block_size
    if extra == "large":
        size, blocks = size + 5, blocks + 3  # the kernel fills ceil(size / block_size) blocks, no more
    return size, blocks


ALIGN_CASES = [  # num_experts, tokens, topk
    (4, 3, 2), (8, 40, 2), (16, 0, 2), (60, 7, 4), (64, 100, 8), (65, 50, 4), (32, 300, 4),
    (8, 300, 4), (256, 20, 8), (256, 200, 8), (128, 129, 8),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_experts,tokens,topk", ALIGN_CASES)
@pytest.mark.parametrize("block_size", [1, 4, 16, 64])
def test_moe_align_block_size(impl, device, num_experts, tokens, topk, block_size):
    rng = random.Random(f"{num_experts} {tokens} {topk} {block_size}")
    for id_dtype in (torch.int32, torch.int64):
        for use_map in (False, True):
            for extra in ("", "pad", "large"):
                for with_scatter in (False, True):
                    what = f"E={num_experts} M={tokens} topk={topk} bs={block_size} {id_dtype} map={use_map} " \
                           f"{extra or 'exact'} scatter={with_scatter}"
                    _check_align(impl["align"], rng, device, num_experts, tokens, topk, block_size, id_dtype,
                                 use_map, extra, with_scatter, what)


def _check_align(align, rng, device, num_experts, tokens, topk, block_size, id_dtype, use_map, extra,
                 with_scatter, what):
    n = tokens * topk
    ids = random_ids(rng, n, num_experts, id_dtype)
    emap = random_map(rng, num_experts) if use_map else None
    size, blocks = buffer_sizes(n, num_experts, block_size, extra)
    topk_ids = torch.tensor(ids, dtype=id_dtype).reshape(tokens, topk).to(device)
    sorted_ids = torch.full((size,), -7, dtype=torch.int32, device=device)
    expert_ids = torch.full((blocks,), -7, dtype=torch.int32, device=device)
    post_pad = torch.full((1,), -7, dtype=torch.int32, device=device)
    scatter = torch.full((n, 1), -7, dtype=torch.int32, device=device) if with_scatter else None
    map_t = torch.tensor(emap, dtype=torch.int32, device=device) if use_map else None
    align(topk_ids, num_experts, block_size, sorted_ids, expert_ids, post_pad, map_t, scatter)

    filled = min(blocks, (size + block_size - 1) // block_size)
    local, counts, starts, total, want_sorted, want_eids, want_scatter = oracle_align(
        ids, num_experts, block_size, emap, size, filled)
    assert total <= size, f"{what}: the oracle's runs overflow the buffer (bad test sizes)"
    assert post_pad.item() == total, f"{what}: num_tokens_post_pad"
    got_eids = expert_ids.cpu().tolist()
    assert got_eids[:filled] == want_eids, f"{what}: expert_ids"
    assert got_eids[filled:] == [-7] * (blocks - filled), f"{what}: expert_ids past the kernel's blocks written"
    got = sorted_ids.cpu().tolist()
    if want_sorted is None:  # the atomic kernel: each expert's rows, in any order, open its run
        want_sorted, place = [n] * size, list(starts)
        for i, e in enumerate(local):
            if e != -1:
                want_sorted[place[e]] = i
                place[e] += 1
        for e in range(num_experts):
            got[starts[e]:starts[e] + counts[e]] = sorted(got[starts[e]:starts[e] + counts[e]])
    assert got == want_sorted, f"{what}: sorted_token_ids"
    if with_scatter:
        assert scatter.cpu().reshape(-1).tolist() == want_scatter, f"{what}: scatter_idx"


def test_moe_align_block_size_checks(impl):
    ids = torch.zeros(4, 2, dtype=torch.int32)
    bufs = (torch.empty(20, dtype=torch.int32), torch.empty(5, dtype=torch.int32), torch.empty(1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="contiguous"):
        impl["align"](ids.t(), 4, 4, *bufs, None)
    with pytest.raises(RuntimeError, match="int32"):
        impl["align"](ids, 4, 4, *bufs, None, torch.empty(8, 1, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="match topk_ids.numel"):
        impl["align"](ids, 4, 4, *bufs, None, torch.empty(7, 1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="padded_num_experts"):
        impl["align"](ids, 1000, 4, *bufs, None)


# ---- moe_sum -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("topk", [1, 2, 3, 4, 8, 9, 11])
def test_moe_sum(impl, device, dtype, topk):
    rng = random.Random(f"{dtype} {topk}")
    gen = torch.Generator().manual_seed(topk)
    num_experts = 12
    for tokens, d in ((1, 8), (5, 24), (7, 13)):
        for mode in ("plain", "ids", "ids+map", "map only"):
            for layout in ("contiguous", "strided"):
                what = f"{dtype} topk={topk} tokens={tokens} d={d} {mode} {layout}"
                ids = [[rng.choice([-1, rng.randrange(num_experts)]) for _ in range(topk)] for _ in range(tokens)]
                emap = [rng.choice([-1, 0, 1, 2]) for _ in range(num_experts)]
                x = (torch.randn(tokens, topk, d, generator=gen) * 4).to(dtype)
                if mode in ("ids", "ids+map"):  # a NaN in a slot the pad-aware reduce skips must not show
                    for t in range(tokens):
                        for k in range(topk):
                            if ids[t][k] < 0 or (mode == "ids+map" and emap[ids[t][k]] < 0):
                                x[t, k, 0] = float("nan")
                xd = x.to(device)
                if layout == "strided":  # [tokens, topk, d] read through strides (hidden stride 2)
                    wide = torch.zeros(tokens, topk, 2 * d, dtype=dtype, device=device)
                    wide[..., ::2] = xd
                    xd = wide[..., ::2]
                out = torch.full((tokens, d), 5.0, dtype=dtype, device=device)
                ids_t = torch.tensor(ids, dtype=torch.int64 if topk % 2 else torch.int32, device=device)
                map_t = torch.tensor(emap, dtype=torch.int32, device=device)
                args = {"plain": (None, None), "ids": (ids_t, None), "ids+map": (ids_t, map_t),
                        "map only": (None, map_t)}[mode]
                impl["sum"](xd, out, *args)
                want_ids = None if mode in ("plain", "map only") else ids
                want_map = emap if mode == "ids+map" else None
                want = oracle_sum(x.float().tolist(), want_ids, want_map)
                want_bits = [to_dtype_bits(v, dtype) for v in want]
                assert bits_of(out) == want_bits, f"{what}: got {out.cpu().tolist()}, want {want}"


def test_moe_sum_checks(impl):
    x = torch.zeros(2, 2, 4)
    with pytest.raises(RuntimeError, match="contiguous output"):
        impl["sum"](x, torch.zeros(4, 2).t())
    with pytest.raises(RuntimeError, match="shape"):
        impl["sum"](x, torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="int32"):
        impl["sum"](x, torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.int32), torch.zeros(4, dtype=torch.int64))


# ---- CUDA graph capture (TritonExperts' path in test_engines_vllm_gpu.py's graph test) -------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_capture_in_cuda_graph(ops):
    num_experts, tokens, topk, block_size, d = 16, 64, 4, 16, 32
    n = tokens * topk
    rng = random.Random(3)
    emap = random_map(rng, num_experts)
    size, blocks = buffer_sizes(n, num_experts, block_size, "")
    ids = torch.zeros(tokens, topk, dtype=torch.int64, device="cuda")
    map_t = torch.tensor(emap, dtype=torch.int32, device="cuda")
    sorted_ids = torch.empty(size, dtype=torch.int32, device="cuda")
    expert_ids = torch.empty(blocks, dtype=torch.int32, device="cuda")
    post_pad = torch.empty(1, dtype=torch.int32, device="cuda")
    x = torch.zeros(tokens, topk, d, device="cuda")
    out = torch.empty(tokens, d, device="cuda")

    def run():
        ops["align"](ids, num_experts, block_size, sorted_ids, expert_ids, post_pad, map_t, None)
        ops["sum"](x, out, ids, map_t)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for step in range(3):
        new = random_ids(rng, n, num_experts, torch.int32)  # (moe_sum reads ids as int64: no wrapping ones)
        ids.copy_(torch.tensor(new).reshape(tokens, topk))
        xs = torch.randn(tokens, topk, d)
        x.copy_(xs)
        graph.replay()
        torch.cuda.synchronize()
        local, counts, starts, total, want_sorted, want_eids, _ = oracle_align(
            new, num_experts, block_size, emap, size, blocks)
        assert post_pad.item() == total and expert_ids.cpu().tolist() == want_eids, f"replay {step}"
        assert sorted_ids.cpu().tolist() == want_sorted, f"replay {step}"  # (the small-batch kernel's order)
        want = oracle_sum(xs.tolist(), [new[t * topk:(t + 1) * topk] for t in range(tokens)], emap)
        assert bits_of(out) == [to_dtype_bits(v, torch.float32) for v in want], f"replay {step}"


# ---- the module stand-in, in child processes with a fake vllm package ------------------------------------

def stand_in_module_line():
    """The line gpu_engine_run.sh writes into .whl/site/vllm/_C_stable_libtorch.py."""
    script = (HERE / "gpu_engine_run.sh").read_text()
    m = re.search(r"^\s*(from epd\.vllm\.testing import install_standins as _i; _i\(\))", script, re.M)
    assert m, "gpu_engine_run.sh no longer writes the stand-in module line"
    return m.group(1)


def fake_vllm(root: Path, stand_in: str | None, extension: bool):
    pkg = root / "vllm"
    fbm = pkg / "model_executor" / "layers" / "fused_moe" / "experts"
    for d in (pkg, pkg / "platforms", pkg / "model_executor", fbm.parent.parent, fbm.parent, fbm):
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").touch()
    (fbm / "fused_batched_moe.py").write_text("_is_capturing_or_compiling = None\n")
    # as vllm/platforms/cuda.py: the unconditional import, then the ops it needs
    (pkg / "platforms" / "cuda.py").write_text("import vllm._C_stable_libtorch  # noqa\nimport torch\n"
                                               "OPS = (torch.ops._C.silu_and_mul, torch.ops._moe_C.moe_sum,\n"
                                               "       torch.ops._moe_C.moe_align_block_size)\n")
    if stand_in is not None:
        (pkg / "_C_stable_libtorch.py").write_text(f"# stand-in\n{stand_in}\n")
    if extension:  # a compiled file that does not load (as vLLM's CUDA build without libcuda)
        (pkg / f"_C_stable_libtorch{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")


def run_child(root: Path, code: str):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(Path(testing.__file__).parents[2])])  # this epd
    env["CUDA_VISIBLE_DEVICES"] = ""  # as on a machine without a GPU: the capture-check patch is exercised
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_stand_in_module_written_by_gpu_engine_run(tmp_path):
    """.whl/site/vllm/_C_stable_libtorch.py: install_standins() runs inside that import (vllm.platforms.cuda's)
    and must neither import it again nor replace it with the empty module."""
    fake_vllm(tmp_path, stand_in_module_line(), extension=False)
    out = run_child(tmp_path, """
        import sys, vllm.platforms.cuda
        m = sys.modules["vllm._C_stable_libtorch"]
        assert m.__file__.endswith("_C_stable_libtorch.py"), m
        from epd.vllm import testing
        assert {"_C::silu_and_mul", "_moe_C::moe_sum", "_moe_C::moe_align_block_size"} <= testing._installed
        fbm = sys.modules.get("vllm.model_executor.layers.fused_moe.experts.fused_batched_moe")
        assert fbm is None, "the capture-check patch imported vLLM's MoE layers inside the platform import"
        print("again", testing.install_standins())
    """)
    assert "again ['fused_batched_moe._is_capturing_or_compiling']" in out, out


@pytest.mark.parametrize("extension", [False, True], ids=["no extension", "extension fails to load"])
def test_empty_module_where_the_extension_is_missing(tmp_path, extension):
    fake_vllm(tmp_path, None, extension=extension)
    out = run_child(tmp_path, """
        import torch
        lib = torch.library.Library("_moe_C", "FRAGMENT")  # as if vLLM's extension had defined moe_sum
        lib.define("moe_sum(Tensor input, Tensor! output, Tensor? topk_ids=None, Tensor? expert_map=None) -> ()")
        from epd.vllm import testing
        print("first", testing.install_standins())
        print("second", testing.install_standins())
        import vllm.platforms.cuda, sys
        assert sys.modules["vllm._C_stable_libtorch"].__spec__.origin is None
    """)
    assert ("first ['vllm._C_stable_libtorch', '_C::silu_and_mul', '_moe_C::moe_align_block_size', "
            "'fused_batched_moe._is_capturing_or_compiling']") in out, out
    assert "second []" in out, out
