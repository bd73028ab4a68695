"""One rank of the host data-path test: a separate process, driven by test_host_ops.py.

argv: socket rank world seed. It joins a rank_major and then an expert_major
group, runs the steps below through the torch ops on CPU tensors, checks what
it received and what combine returned against reference.py, and exits 0, or
prints what differed (with the seed) and exits 1.
"""
from __future__ import annotations

import sys
import traceback

import torch

import epd
import reference as ref

WORLD_DEFAULT = 4
E, TOP_K, HIDDEN, MAX_TOKENS = 10, 3, 32, 16
# (slot, route, tokens per rank, weight mode per layout)
STEPS = [
    [(0, "random", [5, 0, 16, 9], {"rank_major": "already_applied", "expert_major": "apply"})],
    [(1, "skew0", [16, 16, 16, 16], {"rank_major": "ones", "expert_major": "ones"})],
    [(0, "random", [3, 7, 0, 16], {"rank_major": "already_applied", "expert_major": "apply"}),
     (1, f"skew{E - 1}", [2, 2, 2, 0], {"rank_major": "ones", "expert_major": "already_applied"})],
    [(1, "random", [0, 0, 4, 1], {"rank_major": "already_applied", "expert_major": "apply"}),
     (0, "random", [16, 1, 0, 8], {"rank_major": "already_applied", "expert_major": "ones"})],
]


class Mismatch(AssertionError):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def check_rows(v, rows, at, ctx):
    """rows (reference) must sit at v rows at, at+1, ... bit-exact."""
    for i, (x, ids, w, src) in enumerate(rows):
        r = at + i
        expect(torch.equal(v.recv_x[r], x), f"{ctx}: recv_x row {r} differs from source {src}")
        expect(v.recv_ids[r].tolist() == ids, f"{ctx}: recv_ids row {r} = {v.recv_ids[r].tolist()}, want {ids}")
        expect(torch.equal(v.recv_weights[r], torch.tensor(w, dtype=torch.float32)),
               f"{ctx}: recv_weights row {r} = {v.recv_weights[r].tolist()}, want {w}")
        expect(tuple(v.recv_src[r].tolist()) == src, f"{ctx}: recv_src row {r} = {v.recv_src[r].tolist()}, want {src}")


def check_padding(v, lo, hi, ctx):
    if lo >= hi:
        return
    expect(bool((v.recv_ids[lo:hi] == -1).all()), f"{ctx}: padding rows [{lo}, {hi}) have ids other than -1")
    expect(bool((v.recv_weights[lo:hi] == 0).all()), f"{ctx}: padding rows [{lo}, {hi}) have weights other than 0")
    expect(bool((v.recv_src[lo:hi] == -1).all()), f"{ctx}: padding rows [{lo}, {hi}) have a source")


def check_receive(v, exp, layout, ctx):
    expect(v.recv_counts.tolist() == exp["counts"], f"{ctx}: counts {v.recv_counts.tolist()}, want {exp['counts']}")
    if layout == "rank_major":
        expect(v.total_rows == len(exp["rows"]), f"{ctx}: total_rows {v.total_rows}, want {len(exp['rows'])}")
        check_rows(v, exp["rows"], 0, ctx)
        check_padding(v, v.total_rows, v.capacity_rows, ctx)
        return
    expect(v.total_rows == sum(exp["counts"]), f"{ctx}: total_rows {v.total_rows}, want {sum(exp['counts'])}")
    for l, block in enumerate(exp["blocks"]):
        at = l * v.rows_per_expert
        check_rows(v, block, at, f"{ctx} expert {exp['experts'][l]}")
        check_padding(v, at + len(block), at + v.rows_per_expert, f"{ctx} expert {exp['experts'][l]}")


def run_experts(v, layout, mode, params):
    """The experts: f_e(x) = a_e x + b_e on every received (row, expert), written into combine_in."""
    v.combine_in.fill_(float("nan"))  # poison: a row combine reads but the experts did not write shows
    for r in range(v.capacity_rows):
        ids = [int(e) for e in v.recv_ids[r].tolist()]
        if all(e < 0 for e in ids):
            continue
        acc = torch.zeros(HIDDEN)
        for k, e in enumerate(ids):
            if e < 0:
                continue
            scale = float(v.recv_weights[r, k]) if (layout == "rank_major" and mode == "already_applied") or \
                (layout == "expert_major" and mode == "already_applied") else 1.0
            acc += scale * ref.expert_fn(e, v.recv_x[r], params)
        v.combine_in[r] = acc


def make_cases(rank, layout, step_no, step, seed, world):
    cases = []
    for slot, route, ns, modes in step:
        inputs = [ref.make_inputs(seed, step_no * 10 + slot, s, ns[s], E, TOP_K, HIDDEN, route) for s in range(world)]
        x, ids, w = inputs[rank]
        ids_in = ids.to(torch.int32) if step_no % 2 else ids
        cases.append(dict(slot=slot, inputs=inputs, x=x, ids=ids_in, w=w, mode=modes[layout],
                          keep=(x.clone(), ids_in.clone(), w.clone()), ctx=f"{layout} step {step_no} slot {slot}"))
    return cases


def combine_checked(g, layout, c):
    """rank_major refuses `apply` (BAD_WEIGHT_MODE) and keeps the slot usable; then the real combine."""
    if layout == "rank_major":
        try:
            epd.combine(g, c["slot"], "apply")
            raise Mismatch(f"{c['ctx']}: combine with weight mode apply was accepted on rank_major")
        except epd.EpdError as e:
            expect(e.status == epd.Status.BAD_WEIGHT_MODE, f"{c['ctx']}: apply on rank_major gave {e}")
    epd.combine(g, c["slot"], c["mode"])


def check_combined(g, c, params):
    out = torch.full_like(c["x"], float("nan"))  # poison: rows combine does not write show
    got = epd.combine_wait(g, c["slot"], out=out)
    want = ref.expected_output(c["x"], c["ids"], c["w"], params, "ones" if c["mode"] == "ones" else "w")
    expect(got is out, f"{c['ctx']}: combine_wait did not return out")
    if c["x"].shape[0]:
        err = (out - want).abs().max().item()
        expect(torch.allclose(out, want, rtol=1e-5, atol=1e-5), f"{c['ctx']}: combine output differs by {err}")
    for a, b in zip((c["x"], c["ids"], c["w"]), c["keep"]):
        expect(torch.equal(a, b), f"{c['ctx']}: an input tensor was modified")


def run_step(g, layout, step_no, step, seed, world, own, params):
    """Dispatches every case of the step, waits in reverse order, checks, runs the experts, combines."""
    cases = make_cases(g.rank, layout, step_no, step, seed, world)
    for c in cases:
        epd.dispatch(g, c["slot"], c["x"], c["ids"], c["w"])
    for c in reversed(cases):
        v = epd.dispatch_wait(g, c["slot"])
        exp = ref.expected_receive(c["inputs"], g.rank, layout, own, world, MAX_TOKENS, TOP_K)
        check_receive(v, exp, layout, c["ctx"])
        run_experts(v, layout, c["mode"], params)
    for c in cases:
        combine_checked(g, layout, c)
    for c in cases:
        check_combined(g, c, params)


def main():
    sock, rank, world, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    params = ref.expert_params(E)
    own = ref.owners(E, world)
    try:
        with epd.connect(sock) as c:
            for layout in ("rank_major", "expert_major"):
                with c.join(name=f"ops-{layout}", generation=1, world_size=world, rank=rank, num_experts=E,
                            top_k=TOP_K, hidden=HIDDEN, dtype="fp32", max_tokens_per_rank=MAX_TOKENS,
                            layout=layout, timeout_ms=30000) as g:
                    for i, step in enumerate(STEPS):
                        run_step(g, layout, i, step, seed, world, own, params)
    except Exception:
        print(f"rank {rank} (seed {seed}) failed:\n{traceback.format_exc()}", flush=True)
        return 1
    print(f"rank {rank} ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
