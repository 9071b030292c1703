#!/usr/bin/env bash
# The commands behind the published MoCo V2 + Un-Mix rows (paper Table 1 / 2), one node of 8 GPUs.
# Usage:  DATA=/path/to/imagenet bash run.sh pretrain|lincls|detection   (OUT, EPOCHS, UNMIX_PROB optional)
#
# UNMIX_PROB: upstream's run.sh passes --unmix_prob 0.5 (half global, half region mixtures); the script's
# default (upstream commit 0911f77, "region-level only on ImageNet") is 0.0. Which of the two produced the
# published 68.6 / 71.8 is not stated upstream; both are one flag apart.
# EPOCHS: 200 (68.6 top-1) or 800 (71.8 top-1). --no-unmix gives the MoCo V2 baseline (67.5 / 71.1).
# With 4 GPUs use --lr 0.015 --batch-size 128 (upstream README).
# DATA and OUT may be relative to the directory you call this from; OUT defaults to runs/ next to this script.
set -euo pipefail
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DATA=$(abs "${DATA:?set DATA to the ImageNet root (with train/ and val/)}")
EPOCHS=${EPOCHS:-200}
UNMIX_PROB=${UNMIX_PROB:-0.5}
OUT=${OUT:+$(abs "$OUT")}
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/runs/unmix_mocov2_${EPOCHS}ep}
LAST=$(printf "checkpoint_%04d.pth.tar" $((EPOCHS - 1)))

case "${1:-pretrain}" in
  pretrain)
    python main_moco_unmix.py -a resnet50 --lr 0.03 --batch-size 256 --epochs "$EPOCHS" \
      --mlp --moco-t 0.2 --moco-tm 0.2 --aug-plus --cos --unmix_prob "$UNMIX_PROB" -j 40 \
      --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0 \
      --output-dir "$OUT" "$DATA"
    ;;
  lincls)
    python main_lincls_unmix.py -a resnet50 --lr 30.0 --batch-size 256 \
      --pretrained "$OUT/$LAST" \
      --dist-url tcp://localhost:10001 --multiprocessing-distributed --world-size 1 --rank 0 \
      --output-dir "$OUT/lincls" "$DATA"
    ;;
  detection)  # needs detectron2 and its datasets under detection/datasets
    python detection/convert-pretrain-to-detectron2.py "$OUT/$LAST" "$OUT/detectron2.pkl"
    cd detection
    python train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml --num-gpus 8 \
      MODEL.WEIGHTS "$OUT/detectron2.pkl" OUTPUT_DIR "$OUT/voc"
    python train_net.py --config-file configs/coco_R_50_C4_2x_moco.yaml --num-gpus 8 \
      MODEL.WEIGHTS "$OUT/detectron2.pkl" OUTPUT_DIR "$OUT/coco"
    ;;
  *) echo "usage: DATA=/path/to/imagenet bash run.sh pretrain|lincls|detection" >&2; exit 2 ;;
esac
