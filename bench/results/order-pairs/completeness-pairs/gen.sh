#!/bin/bash
# completeness pairs: k=4 clips of fresh multi-event training prompts; the winner has every event (score >= 0.5),
# the loser misses one (score <= 0.25)
cd /work/main
for i in 4 5 6 7; do
  [ -f runs/complete/pairs-$i/.done ] && continue
  OMP_NUM_THREADS=1 python -m annotate.autorank --model tiny --prompts runs/order/prompts-$i.txt --k 4 \
    --seed $((19000 + i * 100)) --batch-size 8 --min-chosen-score 0.5 --max-rejected-score 0.25 --min-margin 0.25 \
    --out runs/complete/pairs-$i > runs/complete/gen-$i.log 2>&1 && touch runs/complete/pairs-$i/.done
done
