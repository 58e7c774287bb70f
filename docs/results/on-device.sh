#!/usr/bin/env bash
# Run docs/results/Makefile on a lent GPU inside one device call, and leave what it finished
# under $OUT as one archive, results.tar.gz, of paths relative to the repository root. Run it
# there from the repository root, with the MNIST file carried in the ignored folder runs/data/
# (here: mkdir -p runs/data && cp ../shared/data/mnist/t10k-images-idx3-ubyte.gz runs/data/):
#
#   run(command="bash docs/results/on-device.sh 480", carry=["runs/data"], timeout_s=590)
#
# and back here, in the repository root: tar -xzf <files_at>/results.tar.gz, then commit.
# The batches kept by Table 1's S = 1000 piece (docs/results/mnist/table1/pieces/
# s1000.progress/) travel both ways; once the archive holds that piece's s1000.json, delete
# the folder here too (on the device the piece deleted it, and tar cannot say so).
# A piece still running at SECONDS is stopped and left for the next call (make skips the
# pieces that came back). Further arguments go to make: targets, or VAR=value (CKPT=...).
# DEVICE (default cuda), JOBS (2) and BATCH (1000) set how the pieces run. The model runs
# in full fp32 (the Makefile's PRECISION): TF32, which PyTorch allows in cuDNN convolutions by
# default, is turned off.
set -euo pipefail
seconds=${1:?usage: on-device.sh SECONDS [MAKE ARGS...]}
shift
out=${OUT:?OUT is where the device tool collects files}
root=$PWD
python=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cat >"$scratch/ddim_fp32.py" <<'EOF'
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
from ddim.cli import main  # noqa: E402

sys.argv[0] = "ddim"
main()
EOF
touch "$scratch/start"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
status=0
# The device tool's OUT must not reach make, where OUT names the results folder.
env -u OUT timeout -s TERM "$seconds" make -C docs/results -j "${JOBS:-2}" \
    DDIM="$python $scratch/ddim_fp32.py" PYTHON="$python" \
    DATA="$root/runs/data/t10k-images-idx3-ubyte.gz" BATCH="${BATCH:-1000}" \
    FAST="--device ${DEVICE:-cuda} --channels-last" "$@" \
    2>&1 | tee "$out/make.log" || status=$?
find docs -type f -newer "$scratch/start" -not -path '*/.*' | sort >"$scratch/files"
tar -czf "$out/results.tar.gz" -T "$scratch/files"
echo "make exited with $status; results.tar.gz holds $(wc -l <"$scratch/files") files"
