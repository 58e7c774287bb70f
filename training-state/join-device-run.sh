#!/usr/bin/env bash
# Put the checkpoint that resume-on-device.sh left in FOLDER (the device tool's files_at) in
# place of the committed one in training-state/mnist-next, joined and checked.
#
#   bash training-state/join-device-run.sh FOLDER
set -euo pipefail
from=$(cd "${1:?usage: join-device-run.sh FOLDER}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cd "$root/training-state/mnist-next"
step=$("$python" -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" \
    "$from/latest.json")
name=$(printf 'step_%07d' "$step")
tmp=$(mktemp -d checkpoints/.join.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cat "$from/$name.safetensors.part"* >"$tmp/$name.safetensors"
cat "$from/$name.state.pt.part"* >"$tmp/$name.state.pt"
"$python" -c "import json, sys, safetensors; safetensors.safe_open(sys.argv[1], 'pt'); \
    assert json.load(open(sys.argv[2]))['weights'] == sys.argv[3]" \
    "$tmp/$name.safetensors" "$from/latest.json" "$name.safetensors"
rm -f checkpoints/step_*.safetensors checkpoints/step_*.state.pt
mv "$tmp/$name.safetensors" "$tmp/$name.state.pt" checkpoints/
cp "$from/latest.json" checkpoints/latest.json
cp "$from/log.jsonl" log.jsonl
echo "training-state/mnist-next is at step $step; test it with" \
    "pytest tests/test_training.py -k committed_candidate, then commit"
