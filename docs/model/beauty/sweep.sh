#!/bin/bash
# The Beauty recipe sweeps of docs/model.md, as run on the lent H100 (8 and 12 concurrent
# `pinrec eval` processes on one GPU). The device has no deltalake, so Beauty is read from Parquet
# exports of a lake's events / item_features tables (.device_data/, git-ignored):
#   RES=/tmp/res OUT=/tmp/out bash docs/model/beauty/sweep.sh docs/model/beauty/sweep1.tsv 400
#   RES=/tmp/res OUT=/tmp/out bash docs/model/beauty/sweep.sh docs/model/beauty/sweep2.tsv 380
# usage: sweep.sh CONFIGFILE MAXSEC ; each line: NAME<TAB>extra pinrec eval args.
# Locally: PY=.venv/bin/python DEV=cpu EV=events.parquet ... (CPU: tiny subsets only).
# Results: sweep1_h100.json, sweep2_h100.json (metrics, config, per-epoch loss / val recall).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
DEV=${DEV:-cuda}
EV=${EV:-.device_data/beauty_events.parquet}
RES=${RES:-/tmp/res}; mkdir -p $RES
COMMON="--events $EV --item-features .device_data/beauty_items.parquet --protocol loo --device $DEV --batch-size 256 --quiet --val-users 10000 --set d_model=128 --set emb_dim=128 --set id_dim=128 --set d_ff=512 --set n_layers=2 --set max_len=50"
while IFS=$'\t' read -r name args; do
  [ -z "$name" ] && continue
  ${PY:-python} -m jobs.evaluate $COMMON --max-seconds $2 $args --json $RES/$name.json > $RES/$name.log 2>&1 &
done < $1
wait
${PY:-python} - <<'PY'
import json, glob, os
res = os.environ.get("RES", "/tmp/res"); out = {}
for f in sorted(glob.glob(res + "/*.json")):
    r = json.load(open(f)); n = os.path.basename(f)[:-5]
    out[n] = {k: r.get(k) for k in ("variant", "recall@10", "ndcg@10", "recall@10_excl_history",
              "ndcg@10_excl_history", "recall@20", "ndcg@20", "seconds", "per_seed", "config")}
    out[n]["epochs"] = [[(h["epoch"], round(h["loss"], 4), round(h["val_recall@10"], 4)) for h in t] for t in r["training"]]
    print(n, r["variant"], "R@10 %.4f N@10 %.4f" % (r["recall@10"], r["ndcg@10"]), "epochs", [len(t) for t in r["training"]],
          "best_val", [max(h["val_recall@10"] for h in t) for t in r["training"]], "%.0fs" % r["seconds"])
dst = os.environ.get("OUT", res)
json.dump(out, open(dst + "/sweep.json", "w"), indent=1, default=float)
PY
for f in $RES/*.log; do echo "== $f"; tail -3 $f; done > ${OUT:-$RES}/logs.txt
