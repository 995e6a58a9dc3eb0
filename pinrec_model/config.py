"""The model's configuration: `PinRecConfig` and the `small` / `paper` presets.

The settings are defined in one small frozen dataclass per part of the model (`VariantSettings`,
`ItemTowerSettings`, `SequenceModelSettings`, `HeadSettings`, `ObjectiveSettings`,
`GenerationSettings`), each naming its group for `--print-config` in GROUP. `PinRecConfig` inherits
them all, so it stays one flat frozen dataclass: its field names are the keys of every saved
`config.json` and of `--set key=value`, and `cfg.d_model` reads as it always did; `cfg.groups()`
gives the grouped view."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

VARIANTS = ("uc", "oc", "mt_oc", "pinnerformer", "sasrec")
ITEM_TOWERS = ("hashed_mlp", "id", "id_mlp")
ID_HASHES = ("universal", "direct")
LOGITS = ("cosine", "dot")
HEADS = ("mlp", "none", "add")


@dataclass(frozen=True)
class VariantSettings:
    """Which paper variant: conditioning of the head (OC) and the multi-token objective (MT)."""
    GROUP: ClassVar[str] = "variant"
    variant: str = "uc"  # uc | oc | mt_oc | pinnerformer | sasrec (the last two are baselines)


@dataclass(frozen=True)
class ItemTowerSettings:
    """f_T: item features + hashed IDs -> the shared item space (paper 4.1)."""
    GROUP: ClassVar[str] = "item tower"
    # Recipe options (docs/model.md, Beauty). The defaults are the first recipe, unchanged.
    # item_tower: hashed_mlp = f_T([features, hashed ID]) (paper 4.1); id = the ID embedding
    # alone (SASRec); id_mlp = ID embedding + f_T(features), the ID part kept outside the MLP.
    item_tower: str = "hashed_mlp"
    feature_dim: int = 32
    use_features: bool = True
    id_dim: int = 64
    id_buckets: int = 1 << 16  # rows of the shared hashed-ID table
    id_hashes: int = 2  # k hash functions into that table, summed
    id_hash: str = "universal"  # universal (k hashes) | direct (row = id % id_buckets: exact for dense ids)
    emb_dim: int = 64  # D: the shared item / output representation space
    n_item_types: int = 2  # pin, query


@dataclass(frozen=True)
class SequenceModelSettings:
    """The causal transformer over the history tokens (4.2)."""
    GROUP: ClassVar[str] = "sequence model"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    max_len: int = 50  # history tokens the model reads
    max_positions: int = 128  # history + generated tokens
    input_proj: bool = True  # False: the item embedding * sqrt(d) is the token (tied, SASRec-style)
    # The age feature (time since the NEWEST history token) is not causal in training: at input
    # position i it tells how many tokens of the window come after i, and the age-0 regime of
    # serving is seen at one position per window only. False zeroes it (gap + phases remain).
    time_age: bool = True
    n_actions: int = 6  # engagement actions + search (ids are 1..n_actions, 0 = none)
    n_surfaces: int = 3


@dataclass(frozen=True)
class HeadSettings:
    """The output head: h (+ action / offset condition Phi) -> a query in the item space (4.3)."""
    GROUP: ClassVar[str] = "head"
    # head: mlp = MLP([h, Phi]) | none = h itself (unconditioned only) | add = h + E_a + E_t',
    # a linear O([h, Phi]); none and add need d_model == emb_dim
    head: str = "mlp"
    logits: str = "cosine"  # cosine: lambda * <unit, unit> | dot: plain inner product, no normalisation
    logit_scale: float = 20.0  # lambda in s = lambda * <i_hat, i> - Q(i)


@dataclass(frozen=True)
class ObjectiveSettings:
    """The loss: full or sampled softmax, negatives, logQ (Eq. 2-3), multi-token targets (Eq. 5)."""
    GROUP: ClassVar[str] = "objective"
    full_softmax: bool = False  # score against every catalog item instead of sampled negatives
    logq_correction: bool = True
    # Eq. 2 read literally also subtracts Q from the positive. With accidental hits masked that
    # over-rates popular items (losses.py, tests/unit/model/test_losses.py), so it is opt-in.
    logq_on_positive: bool = False
    n_random_negatives: int = 256
    max_in_batch_negatives: int = 1024
    cms_width: int = 1 << 16
    cms_depth: int = 4
    # t_lim 4 and window 2 beat 8/4 and 16/4 on synthetic unordered recall (docs/model.md)
    t_lim: int = 4  # multi-token: target offsets t' - t are drawn from [1, t_lim] steps
    # t' in time (4.3.2: "t_lim in steps or in time"): with t_lim_unit "seconds", t' is the first
    # token at or after t's time + U(0, t_lim_s) seconds, seen within lookahead_tokens; the offset
    # condition is then the time bucket ceil(t_lim * (ts(t') - ts(t)) / t_lim_s) in [1, t_lim].
    t_lim_unit: str = "steps"  # steps | seconds
    t_lim_s: int = 300
    lookahead_tokens: int = 32
    window: int = 2  # Delta: the target window [t', t' + Delta]
    window_unit: str = "steps"  # steps | seconds (coarse real timestamps need steps)
    window_max_tokens: int = 16  # cap on targets per window when window_unit == seconds
    # min: Eq. 5, the loss of the easiest target in the window. mean: the mean over the window's
    # distinct items -- NOT the paper, an ablation (on trivago the min always picks the current hotel)
    window_loss: str = "min"


@dataclass(frozen=True)
class GenerationSettings:
    """Serving-time generation defaults (4.4)."""
    GROUP: ClassVar[str] = "generation"
    tokens_per_step: int = 4  # default embeddings per generation step (MT variants)
    num_embeddings: int = 16  # default embeddings generated per user


# A dataclass takes its bases' fields last base first: the groups are listed here in reverse
# print order, so to_json writes variant's fields first and generation's last.
@dataclass(frozen=True)
class PinRecConfig(GenerationSettings, ObjectiveSettings, HeadSettings, SequenceModelSettings,
                   ItemTowerSettings, VariantSettings):
    """Every setting of the model, flat (see the group classes above for what each one does)."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.window_loss not in ("min", "mean"):
            raise ValueError(f"window_loss must be 'min' (Eq. 5) or 'mean', got {self.window_loss!r}")
        for name in ("window_unit", "t_lim_unit"):
            if getattr(self, name) not in ("steps", "seconds"):
                raise ValueError(f"{name} must be 'steps' or 'seconds', got {getattr(self, name)!r}")
        if self.t_lim_unit == "seconds" and (self.t_lim_s < 1 or self.lookahead_tokens < 1):
            raise ValueError(f"t_lim_unit=seconds needs t_lim_s >= 1 and lookahead_tokens >= 1, "
                             f"got {self.t_lim_s} and {self.lookahead_tokens}")
        for name, allowed in (("item_tower", ITEM_TOWERS), ("id_hash", ID_HASHES), ("logits", LOGITS),
                              ("head", HEADS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.item_tower != "hashed_mlp" and self.id_dim != self.emb_dim:
            raise ValueError(f"item_tower={self.item_tower} adds the ID embedding to the output space: "
                             f"id_dim ({self.id_dim}) must equal emb_dim ({self.emb_dim})")
        if self.item_tower == "id_mlp" and not self.use_features:
            raise ValueError("item_tower=id_mlp needs use_features (use item_tower=id without features)")
        if self.head == "none" and (self.action_conditioned or self.offset_conditioned):
            raise ValueError(f"head=none has no input for Phi: variant {self.variant} needs head=mlp")
        if (self.head != "mlp" or not self.input_proj) and self.d_model != self.emb_dim:
            raise ValueError(f"head={self.head} / input_proj=False tie the token and item spaces: "
                             f"d_model ({self.d_model}) must equal emb_dim ({self.emb_dim})")

    @property
    def normalised(self) -> bool:
        """Unit item and output vectors (cosine logits) or raw ones (dot logits)."""
        return self.logits == "cosine"

    @property
    def loss_scale(self) -> float:
        """The factor on <i_hat, i> in the softmax: lambda for cosine logits, 1 for dot."""
        return self.logit_scale if self.normalised else 1.0

    @property
    def multi_token(self) -> bool:
        return self.variant in ("mt_oc", "pinnerformer")

    @property
    def action_conditioned(self) -> bool:
        return self.variant in ("oc", "mt_oc")

    @property
    def offset_conditioned(self) -> bool:
        return self.variant == "mt_oc"

    def groups(self) -> dict[str, object]:
        """The grouped view: {group name: that group's settings (a VariantSettings, ...)}, in
        print order; PinRecConfig(**the groups' fields merged) == self."""
        return {g.GROUP: g(**{f.name: getattr(self, f.name) for f in fields(g)}) for g in SETTINGS_GROUPS}

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "PinRecConfig":
        known = {f.name for f in fields(PinRecConfig)}  # not __dataclass_fields__: it holds GROUP too
        return PinRecConfig(**{k: v for k, v in d.items() if k in known})


# The groups in the order --print-config prints them (and to_json writes their fields).
SETTINGS_GROUPS = tuple(reversed(PinRecConfig.__bases__))


PRESETS = {
    "small": PinRecConfig(),
    # The paper's size: GPT-2 small (12 layers, 768 hidden, 12 heads), 256-token histories.
    "paper": PinRecConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072, emb_dim=256,
                          max_len=256, max_positions=512, id_dim=256, id_buckets=1 << 20,
                          n_random_negatives=1024, max_in_batch_negatives=4096),
}


def preset(name: str, **overrides) -> PinRecConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
