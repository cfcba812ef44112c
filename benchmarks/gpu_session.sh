#!/usr/bin/env bash
# The GPU checks of issue 31 in ONE call of a lent GPU, under 9 minutes in all (docs/benchmarks.md,
# "One lent GPU call").
#
#   bash benchmarks/gpu_session.sh prepare RATLIP_GIT_DIR [GALIP_GIT_DIR]   # here, once: fills .authors/
#   bash benchmarks/gpu_session.sh                                         # on the GPU machine
#
# `prepare` exports the authors' code (git archive of the fetched repositories), downloads
# fightingcv-attention 1.0.0 (their ShuffleAttention) and the open_clip_torch 3.3.0 wheel into
# .authors/ (git-ignored: nothing of theirs is committed); the GPU call carries .authors/.
# The run, each stage with its own timeout (seconds) so the whole stays under 9 minutes:
#   check     10   nvidia-smi, torch sees CUDA (else exit 3)
#   deps      45   pip install --no-deps the carried wheels, only where an import fails
#   syncs     75   tests/test_step_syncs.py's CUDA test: the step under torch.cuda.set_sync_debug_mode("error")
#   vs-ratlip 150  benchmarks/vs_authors.py, RATLIP: paper sizes (ngf 64, 224 px, random ViT-B/32 CLIP),
#                  batch 64, fp32 and their fp16 recipe against our bf16
#   profile   230  benchmarks/gpu_profile.py: cub bf16, batches 32,64,128, eager and compiled (--deadline 190)
#   vs-galip  (only with GALIP=1, 60 s) the same for GALIP, fp32 and mixed, 3 rounds
# Worst case 10 + 45 + 75 + 150 + 230 = 510 s (8.5 min); every stage writes under $OUT.
set -u
cd "$(dirname "$0")/.."
AUTHORS=${AUTHORS:-.authors}

if [ "${1:-}" = "prepare" ]; then
    ratlip_git=${2:?usage: gpu_session.sh prepare RATLIP_GIT_DIR [GALIP_GIT_DIR]}
    mkdir -p "$AUTHORS/RATLIP" "$AUTHORS/wheels"
    git --git-dir="$ratlip_git" archive HEAD | tar -x -C "$AUTHORS/RATLIP"
    if [ -n "${3:-}" ]; then mkdir -p "$AUTHORS/GALIP" && git --git-dir="$3" archive HEAD | tar -x -C "$AUTHORS/GALIP"; fi
    (cd "$AUTHORS" && pip download -q --no-deps fightingcv-attention==1.0.0 && tar xzf fightingcv_attention-1.0.0.tar.gz)
    (cd "$AUTHORS/wheels" && pip download -q --no-deps open_clip_torch==3.3.0)
    du -sh "$AUTHORS"
    exit 0
fi

OUT=${OUT:-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
declare -a SUMMARY
stage() {  # stage NAME TIMEOUT CMD...: run, log to $OUT/NAME.log, record status and seconds
    local name=$1 limit=$2
    shift 2
    local t=$(date +%s)
    echo "=== $name (timeout ${limit}s, at $(( t - T0 ))s)"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local status=PASS
    [ $rc -ne 0 ] && status="FAIL rc=$rc"
    [ $rc -eq 124 ] && status="TIMEOUT"
    SUMMARY+=("$name: $status, $(( $(date +%s) - t ))s")
    tail -n 25 "$OUT/$name.log"
    return $rc
}

stage check 10 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv && python -c "import torch; assert torch.cuda.is_available(), \"no CUDA\"; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"' \
    || { echo "gpu_session: no CUDA GPU is visible"; exit 3; }
stage deps 45 bash -c "python -c 'import open_clip' 2>/dev/null || pip install -q --no-deps --no-index $AUTHORS/wheels/*.whl; python -c 'import open_clip, tqdm, torchvision; print(open_clip.__version__)'"
stage syncs 75 python -m pytest -q -p no:cacheprovider tests/test_step_syncs.py -k cuda
stage vs-ratlip 150 python benchmarks/vs_authors.py --authors "$AUTHORS/RATLIP" --fightingcv "$AUTHORS/fightingcv_attention-1.0.0" \
    --device cuda --batch 64 --ngf 64 --image-size 224 --clip-arch ViT-B-32-quickgelu --rounds 5 --warmup 2 \
    --json "$OUT/vs_authors_ratlip.json"
stage profile 230 python benchmarks/gpu_profile.py --out "$OUT/profile" --preset cub --precision amp_bf16 \
    --batches 32,64,128 --deadline 190
if [ "${GALIP:-0}" = 1 ] && [ -d "$AUTHORS/GALIP" ]; then
    stage vs-galip 60 python benchmarks/vs_authors.py --authors "$AUTHORS/GALIP" --family galip --device cuda --batch 64 \
        --ngf 64 --image-size 224 --clip-arch ViT-B-32-quickgelu --rounds 3 --json "$OUT/vs_authors_galip.json"
fi
echo "=== summary ($(( $(date +%s) - T0 ))s in all)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
