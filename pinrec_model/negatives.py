"""The sampled softmax's swappable parts (paper 4.4.1, Eq. 2-3), in the mould of
generative-recommenders' `NegativesSampler` / `AutoregressiveLoss`: a negatives sampler
(in-batch, uniform random, or both) and a logQ correction, injected into `SampledSoftmaxLoss`.
`PinRecConfig` still selects them (`negatives_sampler`, `logq_correction`), through the same
fields as before: n_random_negatives, max_in_batch_negatives, logq_correction, logq_on_positive.

A sampler works in two phases so that every random draw happens before the transformer (on a
GPU nothing after the forward pass then waits on the host):
    draw(gen, B, L, part, device)   host-side random numbers for the step
    extra_rows                      catalog rows it needs embedded with the step's window tokens
    forward(targets, extra_emb)     -> Negatives(rows [K], emb [K, D], log_count [K])
`log_count` is Q of the logQ correction: the log of the expected number of times an item is
among the K negatives under the sampler's distribution (losses.py explains who gets corrected).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

from pinrec_model import distributed as D
from pinrec_model.losses import CountMinSketch, in_batch_negatives, sampled_softmax_loss


@dataclass
class Negatives:
    rows: torch.Tensor  # [K] catalog rows
    emb: torch.Tensor  # [K, D] float
    log_count: torch.Tensor  # [K] float: Q(i) = log of the expected count of i among the K


@dataclass
class Targets:
    """What the samplers may draw on: the primary targets of the step's M loss rows."""

    rows: torch.Tensor  # [M] catalog rows of the primary targets
    emb: torch.Tensor  # [M, D] float, their embeddings (gradient flows into in-batch negatives)
    sel: tuple  # (b [M], i [M]): the loss rows' places in the [B, L] grid
    counts: list[int]  # loss rows per rank (one entry when not data-parallel)
    part: D.BatchPart | None


class NegativesSampler(abc.ABC):
    """One step's negatives. Made per step by `negatives_sampler` (it holds the step's draws)."""

    extra_rows: torch.Tensor  # [R] catalog rows to embed with the window tokens

    @abc.abstractmethod
    def draw(self, gen: torch.Generator, B: int, L: int, part: D.BatchPart | None, device) -> None:
        """The step's random numbers, drawn on the host from `gen`."""

    @abc.abstractmethod
    def forward(self, targets: Targets, extra_emb: torch.Tensor) -> Negatives:
        """extra_emb [R, D]: the embeddings of `extra_rows` -> the negatives."""

    @abc.abstractmethod
    def log_count(self, rows: torch.Tensor) -> torch.Tensor:
        """[...] catalog rows -> [...] Q under this sampler (for logq_on_positive); after forward."""

    def __call__(self, targets: Targets, extra_emb: torch.Tensor) -> Negatives:
        return self.forward(targets, extra_emb)


class RandomNegatives(NegativesSampler):
    """R pins drawn uniformly with replacement: Q = log(R / N pins) for each."""

    def __init__(self, n: int, pin_rows: torch.Tensor):
        self.n, self.pin_rows = n, pin_rows
        self.extra_rows = pin_rows[:0]

    def draw(self, gen, B, L, part, device) -> None:
        self.extra_rows = self.pin_rows[D.host_to_device(torch.randint(0, len(self.pin_rows), (self.n,), generator=gen),
                                                   device)]

    def forward(self, targets: Targets, extra_emb: torch.Tensor) -> Negatives:
        return Negatives(self.extra_rows, extra_emb, self.log_count(self.extra_rows))

    def log_count(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.full(rows.shape, math.log(len(self.extra_rows) / len(self.pin_rows)), device=rows.device)


class InBatchNegatives(NegativesSampler):
    """Up to k of the step's primary targets (uniform without replacement, from every rank when
    data-parallel); Q = log(m * p(i)), p from the count-min sketch, which counts every primary
    target of the (global) batch first."""

    def __init__(self, k: int, cms: CountMinSketch, item_ids: torch.Tensor):
        self.k, self.cms, self.item_ids = k, cms, item_ids
        self.extra_rows = item_ids.new_zeros(0)
        self.keys, self.m = None, 0

    def draw(self, gen, B, L, part, device) -> None:
        self.keys = D.host_to_device(D.rows_rand(gen, B, L, part), device)  # [B, L] subsample keys

    def forward(self, targets: Targets, extra_emb: torch.Tensor) -> Negatives:
        prim = targets.rows
        # The sketch counts the primary targets of the whole global batch, on every rank: the sum
        # of the ranks' sketches (a sketch is linear in its counts), without sending the tables.
        self.cms.update(self.item_ids[prim if targets.part is None else D.gather_rows(prim, targets.counts)])
        rows, emb = in_batch_negatives(prim, targets.emb, self.keys[targets.sel], self.k, targets.counts,
                                       targets.part)
        self.m = len(rows)
        return Negatives(rows, emb, self.log_count(rows))

    def log_count(self, rows: torch.Tensor) -> torch.Tensor:
        if self.m == 0:  # no in-batch negative: nothing is corrected by this sampler's Q
            return torch.zeros(rows.shape, device=rows.device)
        return (math.log(float(self.m)) + self.cms.log_prob(self.item_ids[rows].reshape(-1))).reshape(rows.shape)


class MixedNegatives(NegativesSampler):
    """In-batch negatives followed by random ones (the paper's mix). The random draw comes first
    on the generator: the order the recorded training runs were made with."""

    def __init__(self, in_batch: InBatchNegatives, random: RandomNegatives):
        self.in_batch, self.random = in_batch, random
        self.extra_rows = random.extra_rows

    def draw(self, gen, B, L, part, device) -> None:
        self.random.draw(gen, B, L, part, device)
        self.in_batch.draw(gen, B, L, part, device)
        self.extra_rows = self.random.extra_rows

    def forward(self, targets: Targets, extra_emb: torch.Tensor) -> Negatives:
        inb, rnd = self.in_batch(targets, extra_emb[:0]), self.random(targets, extra_emb)
        return Negatives(torch.cat([inb.rows, rnd.rows]), torch.cat([inb.emb, rnd.emb]),
                         torch.cat([inb.log_count, rnd.log_count]))

    def log_count(self, rows: torch.Tensor) -> torch.Tensor:
        return self.in_batch.log_count(rows)  # a positive is a target: the in-batch distribution


def negatives_sampler(cfg, cms: CountMinSketch, item_ids: torch.Tensor, pin_rows: torch.Tensor) -> NegativesSampler:
    """The config's choice: both kinds (default), in-batch only (n_random_negatives=0) or random
    only (max_in_batch_negatives=0; RandomNegatives alone when injected by hand). item_ids [N] and pin_rows [P]: the catalog on the device."""
    if cfg.n_random_negatives <= 0 and cfg.max_in_batch_negatives <= 0:
        raise ValueError("n_random_negatives and max_in_batch_negatives are both 0: the sampled softmax "
                         "has no negatives; set one of them (--set n_random_negatives=256) or full_softmax=true")
    if cfg.n_random_negatives <= 0:
        return InBatchNegatives(cfg.max_in_batch_negatives, cms, item_ids)
    # Random only (max_in_batch_negatives=0) is the mix with an empty in-batch part: it still draws
    # the in-batch keys and counts the sketch, so the generator stream, and with it every run
    # trained with that setting before the samplers were parts, stays as it was.
    return MixedNegatives(InBatchNegatives(cfg.max_in_batch_negatives, cms, item_ids),
                          RandomNegatives(cfg.n_random_negatives, pin_rows))


class LogQCorrection:
    """Subtract Q from every negative's logit; from the positives' too with `on_positive` (the
    paper's literal Eq. 2, opt-in: losses.py says why masked hits make it over-rate popular items)."""

    def __init__(self, on_positive: bool = False):
        self.on_positive = on_positive

    def __call__(self, sampler: NegativesSampler, neg: Negatives, pos_rows: torch.Tensor):
        """pos_rows [M, W] catalog rows (-1 = none) -> (pos_q [M, W], neg_q [K])."""
        if self.on_positive:
            pos_q = sampler.log_count(pos_rows.clamp(min=0))
        else:  # masked hits: the positive enters the partition once, uncorrected
            pos_q = torch.zeros(pos_rows.shape, device=pos_rows.device)
        return pos_q, neg.log_count


class NoCorrection:
    """Plain sampled softmax: Q = 0 everywhere."""

    def __call__(self, sampler: NegativesSampler, neg: Negatives, pos_rows: torch.Tensor):
        return torch.zeros(pos_rows.shape, device=pos_rows.device), torch.zeros(len(neg.rows), device=pos_rows.device)


def logq_correction(cfg) -> LogQCorrection | NoCorrection:
    """The config's choice: logq_correction (and logq_on_positive)."""
    return LogQCorrection(cfg.logq_on_positive) if cfg.logq_correction else NoCorrection()


class SampledSoftmaxLoss:
    """Eq. 2/5 with the negatives and the correction injected:
    loss(query [M, D], pos [M, W, D], pos_rows [M, W], pos_valid [M, W], targets) -> scalar."""

    def __init__(self, sampler: NegativesSampler, correction, item_ids: torch.Tensor, scale: float,
                 window_loss: str = "min", loss_fn=sampled_softmax_loss):
        self.sampler, self.correction, self.item_ids = sampler, correction, item_ids
        self.scale, self.window_loss, self.loss_fn = scale, window_loss, loss_fn

    def __call__(self, query, pos, pos_rows, pos_valid, targets: Targets, extra_emb, reduction: str = "mean"):
        neg = self.sampler(targets, extra_emb)
        pos_q, neg_q = self.correction(self.sampler, neg, pos_rows)
        dev = pos_rows.device
        return self.loss_fn(query, pos, self.item_ids[pos_rows.clamp(min=0)], pos_valid, pos_q.to(dev),
                            neg.emb, self.item_ids[neg.rows], neg_q.to(dev), self.scale, self.window_loss,
                            reduction)
