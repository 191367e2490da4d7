#!/usr/bin/env bash
# The GPU proof, on a GPU machine with no internet, from the repo root with the carry in place:
#   deploy/gpu/run.sh [REPORT_DIR]          # REPORT_DIR defaults to $OUT, else bench-results/gpu
#   deploy/gpu/run.sh --dry-run             # here, on CPU: check the carry and the tools, stop before CUDA
# Builds llama-cpp-python with CUDA from the trimmed sdist into .gpu-venv (kept if the machine stays warm:
# a second call skips the build), installs Iris, writes a random-weight Mistral-7B-shaped GGUF, measures,
# and writes report.md + JSON. Every step has a time box (seconds, override by env) so the run ends < 10 min.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
carry="deploy/gpu/carry"
dry_run="${DRY_RUN:-0}"
[ "${1:-}" = "--dry-run" ] && { dry_run=1; shift; }
report_dir="${1:-${OUT:-bench-results/gpu}}"
venv="$root/.gpu-venv"
model="${GPU_MODEL:-/tmp/iris-gpu/mistral-7b-random-f16.gguf}"
# Budgets (s): 280 + 80 + 60 + 70 + 60 + 30 + ~20 of installs < 600; a warm second call skips build and model.
: "${BUILD_S:=280}" "${MODEL_S:=80}" "${WORKER_S:=60}" "${SERVER_S:=70}" "${SEED_S:=60}" "${PREEMPT_S:=30}"
start_s=$SECONDS
say() { printf '[%4ds] %s\n' $((SECONDS - start_s)) "$*"; }
fail() { say "FAILED: $*"; exit 1; }
# shellcheck source=deploy/gpu/checks.sh
source deploy/gpu/checks.sh

if [ "$dry_run" = 1 ]; then
    say "dry run on $(hostname): checks what the GPU run brings along, then stops before CUDA"
    check_carry || fail "carry check"
    check_wheels_resolve || fail "wheels do not resolve for Python 3.12"
    check_tools
    check_cuda_configure
    say "dry run: stops here; the next step builds llama-cpp-python with CUDA (needs the GPU machine)"
    exit 0
fi

mkdir -p "$report_dir" "$(dirname "$model")"
log="$report_dir/run.log"
exec > >(tee -a "$log") 2>&1
say "GPU run on $(hostname), report in $report_dir"
check_carry || fail "carry check"
check_tools
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$report_dir/gpu-memory.csv" &
sampler=$!
finish() {  # also when a step fails or the run is stopped: the report says how far it got
    kill "$sampler" 2>/dev/null
    "$venv/bin/python" deploy/gpu/report.py "$report_dir" > /dev/null && say "report: $report_dir/report.md"
    say "done in $((SECONDS - start_s))s"
}
trap finish EXIT

install_all() {
    if "$venv/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null; then
        say "install: $venv already has a CUDA llama-cpp-python; skipping the build"
    else
        "${PYTHON312:-python3.12}" -m venv "$venv" || return 1
        pip_offline install --quiet -r "$carry/requirements.txt" || return 1
        say "install: building llama-cpp-python with CUDA (sm_90), at most ${BUILD_S}s"
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            timeout "$BUILD_S" "$venv/bin/python" -m pip install --no-index --no-build-isolation --no-deps \
            "$carry"/llama_cpp_python-*.tar.gz || return 1
    fi
    pip_offline install --quiet --no-deps --force-reinstall "$carry"/wheels/iris_llm-*.whl || return 1
    "$venv/bin/python" -c 'import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), "no GPU offload"'
}
pip_offline() { "$venv/bin/python" -m pip "$1" --no-index --find-links "$carry/wheels" "${@:2}"; }
step() {  # step NAME SECONDS COMMAND...: run it time-boxed, note how it went
    local name="$1" limit="$2" t0=$SECONDS
    shift 2
    say "$name: at most ${limit}s"
    if timeout "$limit" "$@"; then status="ok"; else status="failed (exit $?)"; fi
    say "$name: $status after $((SECONDS - t0))s"
    echo "$name|$status|$((SECONDS - t0))" >> "$report_dir/steps.txt"
    [ "$status" = ok ]
}

: > "$report_dir/steps.txt"
install_t0=$SECONDS
install_all || { echo "install|failed|$((SECONDS - install_t0))" >> "$report_dir/steps.txt"; fail "install (see $log)"; }
echo "install|ok|$((SECONDS - install_t0))" >> "$report_dir/steps.txt"
# Written under another name and moved: a make-model cut off by its time box leaves no half file behind.
[ -f "$model" ] || { step make-model "$MODEL_S" "$venv/bin/iris" bench make-model "$model.part" --shape mistral-7b \
    && mv "$model.part" "$model"; }
[ -f "$model" ] || fail "no model at $model"
step worker "$WORKER_S" "$venv/bin/iris" bench worker --model "$model" --n-gpu-layers -1 --flash-attn on \
    --concurrency 1,8,32 --max-tokens 128 --rounds 2 --threads 4 --out "$report_dir/worker.json"
step llama-server "$SERVER_S" "$venv/bin/iris" bench llama-server --model "$model" --n-gpu-layers -1 \
    --flash-attn --concurrency 1,8,32 --max-tokens 128 --rounds 2 --threads 4 --ttft-requests 10 \
    --out "$report_dir/llama-server.json"
step seed "$SEED_S" "$venv/bin/iris" bench seed --model "$model" --n-gpu-layers -1 --max-tokens 128 --prompts 3 \
    --behaviour closed --out-dir "$report_dir/seed"
measure_preemption
