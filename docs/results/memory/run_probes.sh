#!/bin/sh
# Issue 21, item 3: LMN's memory mechanisms on the probes of docs/results/probes.md at the
# 2,000-step budget (passkey as in passkey-long.json, MQAR (64, 4) as in mqar-long.json), one
# thread per process. Every arm has the same budget and the same lr (3e-3: the lr mqar.json
# chose for LMN, GPT-2 and Mamba-2; no sweep). Every stage appends to its JSON and skips runs
# already there, so the script can be re-run after a stop.
# Usage: sh docs/results/memory/run_probes.sh STAGE...
export OMP_NUM_THREADS=1
OUT="--out docs/results/memory --runs-dir /work/probe-runs --threads 1"
PK="--cell block_size=256 --task-opt n_test=512 --steps 2000 --batch-size 16 --eval-interval 500 --eval-iters 4 --lrs 3e-3"
MQ="--cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3"
for stage in "$@"; do
  case $stage in
    # passkey, each mechanism alone (two processes: A1 and A2 in parallel)
    A1) lmn probe passkey --name passkey-a $OUT $PK --seeds ${SEEDS:-1} --model lmn:summarizer=gated --model lmn:summarizer=residual --model lmn:node_norm=true --model lmn:window=16 ;;
    A2) lmn probe passkey --name passkey-b $OUT $PK --seeds ${SEEDS:-1} --model lmn:level_gate=data --model lmn:sink=true --model lmn:summarizer=gated,window=16,level_gate=data,sink=true ;;
    # the pinned memory (pinned.md: 0.133 on passkey alone) with a local window beside it
    A4) lmn probe passkey --name passkey-c $OUT $PK --seeds ${SEEDS:-1} --model lmn:pinned=16,window=8 --model lmn:pinned=16,window=8,summarizer=gated,level_gate=data ;;
    # the log-linear peer on the same budget
    A3) lmn probe passkey --name passkey-peer $OUT $PK --seeds ${SEEDS:-1} --model loglinear-mamba2 ;;
    # second seeds of the arms that left chance (seed-1 results in passkey-a/b/c.json)
    A5) lmn probe passkey --name passkey-s2 $OUT $PK --seeds 2 --model lmn:summarizer=gated ;;
    # the gated tree (which leaves chance alone) with a short window: the key digits' index within the key is local
    A6) lmn probe passkey --name passkey-d $OUT $PK --seeds ${SEEDS:-1} --model lmn:summarizer=gated,window=4 ;;
    # the gated merge on the tree that recalls MQAR best at this budget (stride 4, "digits": mqar-long.json 0.905)
    A7) lmn probe passkey --name passkey-e $OUT $PK --seeds ${SEEDS:-1} --model lmn:summarizer=gated,stride=4,read=digits ;;
    B4) lmn probe mqar --name mqar-e $OUT $MQ --seeds ${SEEDS:-1} --model lmn:summarizer=gated,stride=4,read=digits ;;
    # MQAR (64, 4)
    B1) lmn probe mqar --name mqar-a $OUT $MQ --seeds ${SEEDS:-1} --model lmn:window=16 --model lmn:summarizer=gated --model lmn:summarizer=residual --model lmn:node_norm=true ;;
    B3) lmn probe mqar --name mqar-c $OUT $MQ --seeds ${SEEDS:-1,2} --model lmn:summarizer=gated ;;
    B2) lmn probe mqar --name mqar-b $OUT $MQ --seeds ${SEEDS:-1} --model lmn:level_gate=data --model lmn:sink=true --model lmn:summarizer=gated,window=16,level_gate=data,sink=true ;;
  esac
done
