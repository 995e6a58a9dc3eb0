"""How well a trained model conditions on the outcome, read off the `candidates` it scored:
per arm, the share of each synthetic format among the top-N candidates (what serving shows
first), and the expected repin rate of those items (P(repin | format), jobs/synth.py), i.e. the
repin share a user would realise if they engaged with every candidate alike.

    python -m bench.conditioning_probe --lake L --ds D --users U --days N --items I [--json OUT]

Only for synthetic lakes (the formats come from the world `pinrec data synth` built)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.compute as pc

from pinrec.core.lake import DeltaRsTables
from jobs.synth import ACTION_PROBS, FORMATS, SynthConfig, build_world
from pinrec.core.layout import Lake


def probe(lake: str, ds: str, synth: SynthConfig, top: int = 20) -> dict:
    world = build_world(synth)
    t = DeltaRsTables(Lake.at(lake)).read("candidates", [ds], columns=["arm", "rank", "item_id"])
    t = t.filter(pc.less(t.column("rank"), top))
    out = {}
    for arm in sorted(set(t.column("arm").to_pylist())):
        ids = np.asarray(t.filter(pc.equal(t.column("arm"), arm)).column("item_id"), dtype=np.int64) - 1
        ids = ids[(ids >= 0) & (ids < len(world.item_format))]
        fmt = world.item_format[ids]
        out[arm] = {"items": int(len(ids)),
                    "format_share": {f: float(np.mean(fmt == i)) for i, f in enumerate(FORMATS)},
                    "expected_repin_rate": float(ACTION_PROBS[fmt, 0].mean())}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lake", required=True)
    p.add_argument("--ds", required=True)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", dest="json_out")
    a = p.parse_args()
    res = probe(a.lake, a.ds, SynthConfig(users=a.users, days=a.days, items=a.items, seed=a.seed), a.top)
    print(json.dumps(res, indent=1))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
