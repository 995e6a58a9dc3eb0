#!/bin/bash
# One device round for issue 15: the suite's barred datasets (3 seeds), the small ones (1 seed, all
# variants), trivago recall@10_new (6 seeds, OC and MT+OC with in-run UC), all concurrent on one H200.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT build/trivago_runs
nvidia-smi -L; nproc
B="python3 -m pinrec.cli bench quality --device cuda --reference sasrec_reference.py --data-root /nonexistent --workdir build/quality --max-seconds ${CAP:-330}"
$B --datasets beauty,sports,toys,yelp --variants uc,sasrec --seeds 0,1,2 --parallel 40 --json $OUT/quality_barred.json > $OUT/quality_barred.log 2>&1 &
$B --datasets lastfm,movielens100k --variants uc,sasrec,oc,mt_oc --seeds 0 --parallel 12 --json $OUT/quality_small.json > $OUT/quality_small.log 2>&1 &
for v in mt_oc oc; do for s in 0 1 2 3 4 5; do
  python3 -m jobs.evaluate --events build/trivago/events.parquet --item-features build/trivago/items.parquet \
    --set feature_dim=4096 --protocol unordered --window 6 --device cuda --max-seconds ${TCAP:-200} --quiet \
    --variant $v --controllability --seed $s --json build/trivago_runs/trivago_${v}_s$s.json \
    > build/trivago_runs/trivago_${v}_s$s.log 2>&1 &
done; done
wait
tail -12 $OUT/quality_barred.log $OUT/quality_small.log
for f in build/trivago_runs/*.json; do python3 -c "
import json,sys; d=json.load(open('$f')); print('$f', {k: round(d[k],4) for k in ('recall@10','uc_recall@10','lift_over_uc','recall@10_new','uc_recall@10_new','lift_over_uc_new') if k in d})"; done
tar czf $OUT/runs.tgz build/quality/runs build/trivago_runs
