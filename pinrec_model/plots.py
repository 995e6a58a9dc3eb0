"""PNG plots beside an evaluation JSON: training curves, the controllability matrix (Figure 4)
and the tokens-per-step trade-off (Figure 5)."""
from __future__ import annotations

from pathlib import Path


def write_plots(result: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    curves = [h for h in result.get("training", []) if h]
    if curves:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        for i, h in enumerate(curves):
            ep = [r["epoch"] for r in h]
            ax[0].plot(ep, [r["loss"] for r in h], label=f"seed {result['seeds'][i]}")
            ax[1].plot(ep, [r["val_recall@10"] for r in h])
        ax[0].set(xlabel="epoch", ylabel="training loss")
        ax[1].set(xlabel="epoch", ylabel="validation recall@10")
        ax[0].legend()
        fig.suptitle(f"{result['variant']} training")
        fig.tight_layout()
        out.append(_save(fig, stem, "training"))
    if "controllability" in result:
        m = result["controllability"]
        rows = list(m)
        seen = {c for r in m.values() for c in r}
        # same order on both axes, so the matching-action cells form the diagonal
        cols = [c for c in rows if c in seen] + sorted(seen - set(rows))
        import numpy as np

        z = np.array([[m[r].get(c, np.nan) * 100 for c in cols] for r in rows])
        fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 1.0 * len(rows) + 1.5))
        lim = np.nanmax(np.abs(z)) if np.isfinite(z).any() else 1
        im = ax.imshow(z, cmap="RdBu", vmin=-lim, vmax=lim)
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{z[i, j]:+.1f}%", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), cols, rotation=30)
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel="actual action", ylabel="desired action", title="unordered recall lift, OC over UC")
        fig.colorbar(im)
        fig.tight_layout()
        out.append(_save(fig, stem, "controllability"))
    if "tokens_per_step" in result:
        t = result["tokens_per_step"]
        ks = [int(k) for k in t]
        fig, ax = plt.subplots(1, 3, figsize=(11, 3.2))
        for a, key in zip(ax, ("recall@10", "diversity", "latency_s")):
            a.plot(ks, [t[str(k)][key] for k in ks], marker="o")
            a.set_xscale("log", base=2)
            a.set(xlabel="embeddings per step", ylabel=key)
        fig.suptitle(f"constant {t[str(ks[0])]['embeddings']} embeddings per user")
        fig.tight_layout()
        out.append(_save(fig, stem, "tokens_per_step"))
    return out


def _save(fig, stem: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    p = Path(f"{stem}.{name}.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
