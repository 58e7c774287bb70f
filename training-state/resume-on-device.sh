#!/usr/bin/env bash
# Continue the issue-10 candidate run (training-state/mnist-next) on a lent GPU for SECONDS,
# then leave its newest checkpoint under $OUT in parts the device tool can bring back (at
# most 8 files of 16 MiB). Run it there from the repository root, with the MNIST file
# carried in the ignored folder runs/data/ (here: mkdir -p runs/data && cp
# ../shared/data/mnist/t10k-images-idx3-ubyte.gz runs/data/; carry ["runs/data"]):
#
#   bash training-state/resume-on-device.sh 480 [TOTAL_STEPS]
#
# and back here: bash training-state/join-device-run.sh /path/to/files_at
# SECONDS must leave a minute of the call's limit for the last checkpoint and the copy.
set -euo pipefail
seconds=${1:?usage: resume-on-device.sh SECONDS [TOTAL_STEPS]}
total=${2:-40000}
out=${OUT:?OUT is where the device tool collects files}
run=/tmp/mnist-next
rm -rf "$run" && cp -r training-state/mnist-next "$run"
python=${PYTHON:-python3}
status=0
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout -s TERM "$seconds" "$python" -m ddim.train \
    configs/mnist.yaml --resume --set "out_dir=$run" --set training.cooldown_steps=0 \
    --set data.path=runs/data/t10k-images-idx3-ubyte.gz \
    --set "training.total_steps=$total" --set training.ckpt_every=2000 \
    --set training.log_every=250 || status=$?
# 0: total_steps reached; 124/130: stopped by the TERM of timeout, after a checkpoint.
case $status in 0 | 124 | 130) ;; *) exit "$status" ;; esac
step=$("$python" -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" \
    "$run/checkpoints/latest.json")
name=$(printf 'step_%07d' "$step")
cp "$run/checkpoints/latest.json" "$run/log.jsonl" "$out/"
split -b 15M -d "$run/checkpoints/$name.safetensors" "$out/$name.safetensors.part"
split -b 15M -d "$run/checkpoints/$name.state.pt" "$out/$name.state.pt.part"
echo "step $step: $(ls "$out" | tr '\n' ' ')"
