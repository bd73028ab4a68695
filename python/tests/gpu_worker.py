"""One rank of the GPU op tests: a separate process, driven by test_gpu_ops.py.

argv: socket rank world seed mode, mode one of:
  eager  bf16 rank_major and expert_major, fp8 dispatch, n = 0, skewed routing,
         both slots interleaved, x=None (the caller wrote send_*), expert_out;
  graph  one CUDA graph of dispatch .. combine_wait captured once and replayed
         with a device-side token count that changes between replays;
  badid  a bad expert id fails that call (Group.status names it) and the next works.
Every rank is placed on GPU 0. Exits 0, or prints what differed and exits 1.
"""
from __future__ import annotations

import sys
import traceback

import torch

import epd
import reference as ref

E, TOP_K, HIDDEN, MAX_TOKENS = 10, 3, 256, 24
FP8_MAX = 448.0


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def join(c, world, rank, name, layout, quant="none", dtype="bf16"):
    return c.join(name=name, generation=1, world_size=world, rank=rank, placement=[(0, 0)] * world, num_experts=E,
                  top_k=TOP_K, hidden=HIDDEN, dtype=dtype, dispatch_quant=quant, max_tokens_per_rank=MAX_TOKENS,
                  layout=layout, timeout_ms=30000)


def quantize_ref(x):
    """The documented fp8 rule, written independently: per 128 elements scale = amax / 448."""
    blocks = x.float().reshape(x.shape[0], x.shape[1] // 128, 128)  # also for 0 rows
    scale = blocks.abs().amax(-1, keepdim=True) / FP8_MAX
    q = (blocks / torch.where(scale > 0, scale, torch.ones_like(scale))).to(torch.float8_e4m3fn)
    return (q.float() * scale).view_as(x.float())


def experts(v, layout, mode, params, fp8):
    """f_e(x) = a_e x + b_e for every received (row, expert), vectorised (legal in a CUDA graph);
    params are (a, b) on the GPU."""
    a, b = params
    ids = v.recv_ids.long()
    valid = (ids >= 0).float()
    idc = ids.clamp(min=0)
    x = v.recv_x.float()
    if fp8:
        x = (x.view(x.shape[0], x.shape[1] // 128, 128) * v.recv_scales.unsqueeze(-1)).view_as(x)
    f = a[idc].unsqueeze(-1) * x.unsqueeze(1) + b[idc].unsqueeze(-1)
    weighted = mode == "already_applied"
    wk = v.recv_weights * valid if weighted else valid
    v.combine_in.copy_((f * wk.unsqueeze(-1)).sum(1).to(v.combine_in.dtype))


def reference_out(x, ids, w, params, mode, fp8):
    xs = quantize_ref(x) if fp8 else x.float()
    return ref.expected_output(xs, ids, w, params, "ones" if mode == "ones" else "w")


def magnitude(x, ids, w, params, mode):
    """sum_k |w_k| (|a_e| |x| + |b_e|): the scale of each output element, for a bf16 tolerance."""
    a, b = params
    m = torch.zeros(x.shape[0], x.shape[1])
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if e >= 0:
                wk = 1.0 if mode == "ones" else abs(float(w[t, k]))
                m[t] += wk * (abs(float(a[e])) * x[t].float().abs() + abs(float(b[e])))
    return m


def check_out(out, want, mag, ctx):
    """bf16 outputs: each element within 2^-6 of its magnitude (a wrong expert or weight is far off)."""
    if out.shape[0] == 0:
        return
    diff = (out.float().cpu() - want).abs()
    bad = diff > mag * 2.0 ** -6 + 1e-3
    expect(not bool(bad.any()), f"{ctx}: combine output differs at {bad.nonzero()[:4].tolist()} by up to "
                                f"{diff.max().item()}")


def check_received(v, inputs, rank, layout, world, fp8, ctx):
    """Row count, counts, sources and payloads against reference.expected_receive."""
    own = ref.owners(E, world)
    exp = ref.expected_receive(inputs, rank, layout, own, world, MAX_TOKENS, TOP_K)
    torch.cuda.current_stream().synchronize()
    expect(v.recv_counts.tolist() == exp["counts"], f"{ctx}: counts {v.recv_counts.tolist()} want {exp['counts']}")
    rows = exp["rows"] if layout == "rank_major" else \
        [(r, l * v.rows_per_expert + i) for l, blk in enumerate(exp["blocks"]) for i, r in enumerate(blk)]
    if layout == "rank_major":
        rows = [(r, i) for i, r in enumerate(rows)]
    total = int(v.recv_total.item())
    expect(total == len(rows), f"{ctx}: recv_total {total} want {len(rows)}")
    for (x, ids, w, src), at in rows:
        expect(tuple(v.recv_src[at].tolist()) == src, f"{ctx}: recv_src row {at} = {v.recv_src[at].tolist()} want {src}")
        expect(v.recv_ids[at].tolist() == ids, f"{ctx}: recv_ids row {at} = {v.recv_ids[at].tolist()} want {ids}")
        if fp8:
            got = (v.recv_x[at].float().view(-1, 128) * v.recv_scales[at].unsqueeze(-1)).view(-1).cpu()
            expect(torch.allclose(got, quantize_ref(x.unsqueeze(0))[0], rtol=0.07, atol=1e-3),
                   f"{ctx}: fp8 payload row {at} does not dequantize to the source row")
        else:
            expect(torch.equal(v.recv_x[at].cpu(), x), f"{ctx}: recv_x row {at} differs from source {src}")


def step(g, world, seed, no, cases, fp8, via_send=False, via_expert_out=False):
    """cases: [(slot, route, ns, mode)]; dispatch all, wait in reverse, combine, combine_wait."""
    layout = g.spec["layout"].name.lower()
    params = ref.expert_params(E)
    runs = []
    for slot, route, ns, mode in cases:
        inputs = [ref.make_inputs(seed, no * 10 + slot, s, ns[s], E, TOP_K, HIDDEN, route, torch.bfloat16)
                  for s in range(world)]
        x, ids, w = inputs[g.rank]
        runs.append((slot, inputs, x, ids, w, mode, f"{layout}{' fp8' if fp8 else ''} step {no} slot {slot}"))
    for slot, _, x, ids, w, _, _ in runs:
        xd, idd, wd = x.cuda(), ids.to(torch.int32).cuda(), w.cuda()
        if via_send:
            v = g.views(slot)
            v.send_x[: x.shape[0]].copy_(xd)
            v.send_ids[: x.shape[0]].copy_(idd)
            v.send_weights[: x.shape[0]].copy_(wd)
            epd.dispatch(g, slot, None, None, None, n_tokens=x.shape[0])
        else:
            epd.dispatch(g, slot, xd, idd, wd)
    expert_outs = {}
    for slot, inputs, _, _, _, mode, ctx in reversed(runs):
        v = epd.dispatch_wait(g, slot)
        check_received(v, inputs, g.rank, layout, world, fp8, ctx)
        experts(v, layout, mode, tuple(p.cuda() for p in params), fp8)
        if via_expert_out:
            expert_outs[slot] = v.combine_in.clone()
            v.combine_in.fill_(float("nan"))  # combine must take expert_out, not these rows
    for slot, _, _, _, _, mode, _ in runs:
        eo = expert_outs.get(slot)
        epd.combine(g, slot, mode, eo, rows=eo.shape[0] if eo is not None else None)
    for slot, _, x, ids, w, mode, ctx in runs:
        out = torch.full((x.shape[0], HIDDEN), float("nan"), dtype=torch.bfloat16, device="cuda")
        epd.combine_wait(g, slot, out=out)
        torch.cuda.current_stream().synchronize()
        g.status(slot, 10000)
        check_out(out, reference_out(x, ids, w, params, mode, fp8), magnitude(x, ids, w, params, mode), ctx)


def run_eager(c, world, rank, seed):
    for layout in ("rank_major", "expert_major"):
        mode = "already_applied" if layout == "rank_major" else "apply"
        for quant in ("none", "fp8_e4m3_block128"):
            fp8 = quant != "none"
            with join(c, world, rank, f"gpu-{layout}-{quant}", layout, quant) as g:
                zero_some = [5, 0, MAX_TOKENS, 9][:world]
                step(g, world, seed, 0, [(0, "random", zero_some, mode)], fp8)
                step(g, world, seed, 1, [(1, "skew0", [MAX_TOKENS] * world, "ones")], fp8)
                step(g, world, seed, 2, [(0, "random", [3, 7, 0, 16][:world], mode),
                                         (1, f"skew{E - 1}", [2, 0, 2, 2][:world], "ones")], fp8)
                step(g, world, seed, 3, [(1, "random", [4] * world, mode), (0, "random", [1] * world, mode)],
                     fp8, via_send=True)
                step(g, world, seed, 4, [(0, "random", [6] * world, mode)], fp8, via_expert_out=True)


def run_graph(c, world, rank, seed, replays=12):
    """Captures dispatch .. combine_wait once per layout; replays with n = (i * 5 + rank) % (MAX + 1) rows."""
    params = ref.expert_params(E)
    for layout in ("rank_major", "expert_major"):
        mode = "already_applied" if layout == "rank_major" else "apply"
        with join(c, world, rank, f"graph-{layout}", layout) as g:
            x = torch.zeros(MAX_TOKENS, HIDDEN, dtype=torch.bfloat16, device="cuda")
            ids = torch.full((MAX_TOKENS, TOP_K), -1, dtype=torch.int32, device="cuda")
            w = torch.zeros(MAX_TOKENS, TOP_K, device="cuda")
            n_dev = torch.zeros(1, dtype=torch.int32, device="cuda")
            out = torch.zeros(MAX_TOKENS, HIDDEN, dtype=torch.bfloat16, device="cuda")
            v = g.views(0)
            g.token(0)
            dev_params = tuple(p.cuda() for p in params)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(s), torch.cuda.graph(graph, stream=s):
                epd.dispatch(g, 0, x, ids, w, n_tokens=MAX_TOKENS, n_tokens_device=n_dev)
                epd.dispatch_wait(g, 0)
                experts(v, layout, mode, dev_params, False)
                epd.combine(g, 0, mode)
                epd.combine_wait(g, 0, out=out)
            torch.cuda.current_stream().wait_stream(s)
            for i in range(replays):
                ns = [(i * 5 + r) % (MAX_TOKENS + 1) for r in range(world)]
                inputs = [ref.make_inputs(seed, 100 + i, r, ns[r], E, TOP_K, HIDDEN, "random", torch.bfloat16)
                          for r in range(world)]
                xi, idi, wi = inputs[rank]
                n = ns[rank]
                x.zero_(); ids.fill_(-1); w.zero_()
                x[:n].copy_(xi); ids[:n].copy_(idi.to(torch.int32)); w[:n].copy_(wi)
                n_dev.fill_(n)
                out.fill_(float("nan"))
                graph.replay()
                torch.cuda.synchronize()
                g.status(0, 10000)
                check_received(v, inputs, rank, layout, world, False, f"{layout} graph replay {i}")
                check_out(out[:n], reference_out(xi, idi, wi, params, mode, False),
                          magnitude(xi, idi, wi, params, mode), f"{layout} graph replay {i} (n={n})")


def run_badid(c, world, rank, seed):
    """Rank 0 sends expert id E + 3: every rank's status names it; the slot's order then goes on
    (combine, combine_wait) and the next step on the slot is verified."""
    with join(c, world, rank, "badid", "rank_major") as g:
        x = torch.randn(2, HIDDEN, device="cuda").to(torch.bfloat16)
        ids = torch.tensor([[0, 1, -1], [E + 3 if rank == 0 else 2, -1, -1]], dtype=torch.int32, device="cuda")
        epd.dispatch(g, 0, x, ids, None)
        epd.dispatch_wait(g, 0)
        torch.cuda.synchronize()
        try:
            g.status(0, 10000)
            failed = None
        except epd.EpdError as e:
            failed = e
        expect(failed is not None and failed.status == epd.Status.EXPERT_ID_OUT_OF_RANGE, f"bad id gave {failed!r}")
        expect(f"value {E + 3}" in failed.message and "rank 0" in failed.message,
               f"the message does not name rank 0 and the value: {failed.message}")
        epd.combine(g, 0, "already_applied")
        epd.combine_wait(g, 0)
        torch.cuda.synchronize()
        try:
            g.status(0, 10000)  # the combine of a failed dispatch: its status is not asserted
        except epd.EpdError:
            pass
        step(g, world, seed, 7, [(0, "random", [4] * world, "already_applied")], False)  # the next call works


def main():
    sock, rank, world, seed, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.cuda.set_device(0)
    try:
        with epd.connect(sock) as c:
            {"eager": run_eager, "graph": run_graph, "badid": run_badid}[mode](c, world, rank, seed)
    except Exception:
        print(f"rank {rank} (seed {seed}, {mode}) failed:\n{traceback.format_exc()}", flush=True)
        return 1
    print(f"rank {rank} ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
