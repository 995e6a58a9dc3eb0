"""Training targets (paper 4.3, Eq. 5): for each input position of a window, the position t'
it is asked to predict (next token, or t' - t drawn on [1, t_lim] in steps or in time), every
pin in the window [t', t' + Delta], and the offset condition. The windows carry
training.lookahead(cfg) tokens past their inputs for them."""
from __future__ import annotations

import torch

from pinrec_model import distributed as D
from pinrec_model.config import PinRecConfig


def time_offsets(ts_s, tok_valid, L: int, u, t_lim_s: int, n_buckets: int, reach: int):
    """t' in time for input positions i < L of windows [B, width]: t' is the first valid token
    j in (i, i + reach] with ts(j) >= ts(i) + u * t_lim_s (u [B, L] in [0, 1)); when the goal
    lies beyond the tokens in reach (a burst), the farthest valid one in reach. Where no token
    falls within t_lim_s (the session ended), t' is the next token and its bucket the farthest.
    -> (steps t' - i [B, L], >= 1; time bucket [B, L] in [1, n_buckets])."""
    B, width = ts_s.shape
    dev = ts_s.device
    j = torch.arange(L, device=dev)[:, None] + torch.arange(1, reach + 1, device=dev)[None, :]  # [L, K]
    jc = j.clamp(max=width - 1)
    ts_j, ok = ts_s[:, jc], tok_valid[:, jc] & (j < width)[None]  # [B, L, K]
    goal = ts_s[:, :L].double() + u.double() * t_lim_s
    hit = ok & (ts_j.double() >= goal[..., None])
    k = torch.arange(1, reach + 1, device=dev)
    first = torch.where(hit, k, reach + 1).min(dim=-1).values
    farthest = torch.where(ok, k, 0).max(dim=-1).values.clamp(min=1)
    steps = torch.where(first <= reach, first, farthest)
    dt = ts_s.gather(1, (torch.arange(L, device=dev)[None] + steps).clamp(max=width - 1)) - ts_s[:, :L]
    bucket = torch.ceil(dt.double() * n_buckets / t_lim_s).long().clamp(1, n_buckets)
    return steps, bucket


def sample_targets(cfg: PinRecConfig, rows, actions, ts_s, is_pin, L: int, gen: torch.Generator,
                   part: D.BatchPart | None = None):
    """Targets for each input position i < L of windows [B, L + E].

    Next-token: t' = i + 1. Multi-token (Eq. 5): t' - i ~ uniform on [1, min(t_lim, tokens
    left)] steps, or t' in time (t_lim_unit seconds, see time_offsets), and every pin in
    [t', t' + Delta] (steps or seconds) is a target.
    Returns (target positions [B, L, W], valid [B, L, W], offset condition [B, L] (the step
    offset, or the time bucket), primary action [B, L], row valid [B, L]). `part`: these rows'
    place in a data-parallel global batch (the uniform draws are the global batch's rows)."""
    B, width = rows.shape
    dev = rows.device
    i = torch.arange(L, device=dev)[None, :].expand(B, L)
    tok_valid = rows >= 0
    last = torch.where(tok_valid, torch.arange(width, device=dev)[None, :], -1).max(dim=1).values  # [B]
    left = (last[:, None] - i).clamp(min=0)  # tokens after i
    if cfg.multi_token and cfg.t_lim_unit == "seconds":
        u = D.host_to_device(D.rows_rand(gen, B, L, part), dev)
        step, offset = time_offsets(ts_s, tok_valid, L, u, cfg.t_lim_s, cfg.t_lim, cfg.lookahead_tokens)
    elif cfg.multi_token:
        u = D.host_to_device(D.rows_rand(gen, B, L, part), dev)
        span = left.clamp(max=cfg.t_lim).clamp(min=1)
        offset = 1 + (u * span).long().clamp(max=cfg.t_lim - 1)
        offset = step = torch.minimum(offset, span)
    else:
        offset = step = torch.ones(B, L, dtype=torch.long, device=dev)
    tprime = (i + step).clamp(max=width - 1)
    if not cfg.multi_token:
        wpos = tprime[..., None]
    elif cfg.window_unit == "steps":
        wpos = tprime[..., None] + torch.arange(cfg.window + 1, device=dev)
    else:
        wpos = tprime[..., None] + torch.arange(cfg.window_max_tokens, device=dev)
    inside = wpos < width
    wpos = wpos.clamp(max=width - 1)
    gather = lambda a: a.gather(1, wpos.reshape(B, -1)).reshape(wpos.shape)
    wvalid = inside & gather(tok_valid) & gather(is_pin)
    if cfg.multi_token and cfg.window_unit == "seconds":
        t0 = ts_s.gather(1, tprime)
        wvalid &= (gather(ts_s) - t0[..., None]) <= cfg.window
    prim_valid = tok_valid.gather(1, tprime) & is_pin.gather(1, tprime)
    row_valid = tok_valid[:, :L] & (left > 0) & prim_valid & wvalid[..., 0]
    return wpos, wvalid, offset, actions.gather(1, tprime), row_valid
