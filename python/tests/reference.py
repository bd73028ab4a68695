"""An independent plain-PyTorch reference for dispatch and combine (no epd code).

It follows the contract in README.md ("The contract"), written from the
documented rules only: rows ordered by source rank then source token; rank_major
has one row per (token, destination rank) with ids of other ranks' experts set
to -1 and weight 0; expert_major has one row per (token, expert) in the block
of the expert's local index (rows_per_expert = world_size * max_tokens);
padding rows carry -1 ids, 0 weights and source (-1, -1); counts are the
(token, expert) pairs of each local expert. Combine: out[t] = sum_k w_k f_e(x)
(weights 1 in `ones` mode) for f_e(x) = a_e * x + b_e.
"""
from __future__ import annotations

import torch


def owners(num_experts: int, world: int, expert_owner=None) -> list:
    """The documented default: contiguous, the first E % W ranks one expert more."""
    if expert_owner is not None:
        return list(expert_owner)
    b, x = divmod(num_experts, world)
    return [e // (b + 1) if e < x * (b + 1) else x + (e - x * (b + 1)) // b for e in range(num_experts)]


def local_experts(own: list, rank: int) -> list:
    return [e for e, r in enumerate(own) if r == rank]


def make_inputs(seed: int, step: int, rank: int, n: int, num_experts: int, top_k: int, hidden: int,
                route: str = "random", dtype=torch.float32):
    """Seeded inputs of one rank: x [n, hidden], ids [n, top_k] int64 (distinct per token, some -1),
    weights [n, top_k] float32 (0 where the id is -1 is NOT assumed: epd must ignore them)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = (torch.randn(n, hidden, generator=g) * 2).to(dtype)
    w = torch.rand(n, top_k, generator=g) + 0.05
    if route == "random":
        ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(n)]) if n else \
            torch.empty(0, top_k, dtype=torch.int64)
        drop = torch.rand(n, top_k, generator=g) < 0.15
        ids = torch.where(drop, torch.full_like(ids, -1), ids)
    elif route.startswith("skew"):  # every token to expert int(route[4:]) only
        ids = torch.full((n, top_k), -1, dtype=torch.int64)
        ids[:, 0] = int(route[4:])
    else:
        raise ValueError(route)
    return x, ids.to(torch.int64), w


def expert_params(num_experts: int):
    a = torch.tensor([0.5 + 0.25 * e for e in range(num_experts)], dtype=torch.float32)
    b = torch.tensor([-1.0 + 0.375 * e for e in range(num_experts)], dtype=torch.float32)
    return a, b


def expert_fn(e: int, x: torch.Tensor, params) -> torch.Tensor:
    a, b = params
    return a[e] * x.float() + b[e]


def _row_for(layout, x, ids, w, t, ks, top_k, src):
    if layout == "rank_major":
        rid = [int(ids[t, k]) if k in ks else -1 for k in range(top_k)]
        rw = [float(w[t, k]) if k in ks else 0.0 for k in range(top_k)]
        return [(None, (x[t], rid, rw, src))]
    return [(int(ids[t, k]), (x[t], [int(ids[t, k])], [float(w[t, k])], src)) for k in ks]


def expected_receive(inputs: list, dest: int, layout: str, own: list, world: int, max_tokens: int, top_k: int):
    """What rank `dest` receives: dict(rows=[(x, ids, weights, src)] in order, counts, blocks) where for
    expert_major `blocks[l]` lists the rows of local expert l."""
    mine = local_experts(own, dest)
    counts = [0] * len(mine)
    rows, blocks = [], [[] for _ in mine]
    for s, (x, ids, w) in enumerate(inputs):
        for t in range(ids.shape[0]):
            ks = [k for k in range(top_k) if int(ids[t, k]) >= 0 and own[int(ids[t, k])] == dest]
            for k in ks:
                counts[mine.index(int(ids[t, k]))] += 1
            for e, row in _row_for(layout, x, ids, w, t, ks, top_k, (s, t)) if ks else []:
                (rows if e is None else blocks[mine.index(e)]).append(row)
    return dict(rows=rows, counts=counts, blocks=blocks, experts=mine)


def expected_output(x, ids, w, params, weight_mode: str) -> torch.Tensor:
    """out[t] = sum over k with ids >= 0 of w_k f_e(x_t) (weights 1 in 'ones')."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if e >= 0:
                wk = 1.0 if weight_mode == "ones" else float(w[t, k])
                out[t] += wk * expert_fn(e, x[t], params)
    return out
