#!/bin/sh
# The reduced CPU budget of docs/results/probes.md, stage by stage (one core:
# OMP_NUM_THREADS=1, --threads 1). Every stage appends to its JSON and skips runs already
# there, so the script can be re-run after a stop.
# Usage: sh docs/results/probes/cpu_probes.sh [STAGE...]   (default: A B D C E)
export OMP_NUM_THREADS=1
MODELS="--model lmn --model gpt2 --model mamba2 --model rwkv --model mamba"
# LMN's other strides and read rules (plain LMN, stride 2 "latest", is in mqar.json / distance.json with the same budget)
STRIDES="--model lmn:read=digits --model lmn:stride=3 --model lmn:stride=3,read=digits --model lmn:stride=4 --model lmn:stride=4,read=digits"
MQAR="--task-opt vocab=64 --task-opt n_test=512 --steps 400 --batch-size 32 --eval-interval 100 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1,2 --sweep first"
DIST="--task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --seeds 1 --cell block_size=160,distances=1;2;4;8;16;32;64;128"
STAGES=${*:-A B D C E}
for stage in $STAGES; do
  case $stage in
    A) lmn probe mqar $MODELS --cell block_size=64,pairs=4 $MQAR ;;
    B) lmn probe mqar --name mqar-strides $STRIDES --cell block_size=64,pairs=4 $MQAR ;;
    C) lmn probe distance $MODELS $DIST --lr-from docs/results/probes/mqar.json ;;
    D) lmn probe distance --name distance-strides $STRIDES $DIST --lr-from docs/results/probes/mqar-strides.json ;;
    E) lmn probe mqar $MODELS --cell block_size=64,pairs=4 --cell block_size=128,pairs=8 $MQAR ;;
    # a 5x longer budget for the two cheapest models only (does LMN learn MQAR at all, given time?)
    F) lmn probe mqar --name mqar-long --model lmn --model gpt2 --cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1 --sweep first ;;
  esac
done
