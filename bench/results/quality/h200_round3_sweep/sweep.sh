#!/bin/bash
# Validation-only sweep (issue 15): UC, seed 0, no test item read (--validation-only).
# B: recipe arch, batch 256, schedule max(20 ep, 2000 steps); C: schedule doubled; D: B at batch 128.
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
W=.devq/quality/data; R=$OUT/runs; mkdir -p $R
ARCH="--set d_model=128 --set emb_dim=128 --set id_dim=128 --set d_ff=512 --set item_tower=id_mlp --set logits=dot --set head=none --set input_proj=false"
declare -A USERS=([beauty]=22363 [sports]=35598 [toys]=19412 [yelp]=30431 [lastfm]=1090)
for ds in beauty sports toys yelp lastfm; do
  u=${USERS[$ds]}
  for cfg in B C D; do
    bs=256; [ $cfg = D ] && bs=128
    steps=$(( (u + 255) / 256 ))
    ep=$(( (2000 + steps - 1) / steps )); [ $ep -lt 20 ] && ep=20
    [ $cfg = C ] && ep=$(( ep * 2 ))
    bsteps=$(( (u + bs - 1) / bs )); wu=$bsteps; [ $wu -lt 50 ] && wu=50; [ $wu -gt 1000 ] && wu=1000
    python3 -m jobs.evaluate --events $W/$ds/events.parquet --item-features $W/$ds/item_features.parquet \
      --protocol loo --variant uc --device cuda --seed 0 --quiet --validation-only $ARCH \
      --batch-size $bs --epochs $ep --patience $ep --warmup $wu --max-seconds 470 \
      --json $R/${ds}_${cfg}.json > $R/${ds}_${cfg}.log 2>&1 &
  done
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 60 > $R/gpu.log &
wait %1 %2 %3 %4 %5 %6 %7 %8 %9 %10 %11 %12 %13 %14 %15
cd $OUT && tar czf sweep.tgz runs && rm -rf runs
python3 - <<'PY'
import json,glob,tarfile,io,os
t=tarfile.open(os.environ['OUT']+'/sweep.tgz')
for m in sorted(t.getmembers(), key=lambda m:m.name):
    if m.name.endswith('.json'):
        d=json.load(t.extractfile(m)); h=d['training'][0]; ps=d['per_seed'][0]
        print(m.name, 'ep',len(h),'best',ps.get('best_epoch'),'val_ndcg',round(ps.get('val_ndcg@10') or 0,4),'val_r10',round(ps.get('val_recall@10') or 0,4),'s',round(d['seconds']))
    elif m.name.endswith('.log'):
        txt=t.extractfile(m).read().decode()
        if 'Traceback' in txt: print(m.name, txt[-800:])
PY
