# Checks and optional steps of deploy/gpu/run.sh (sourced; uses $carry, $venv, $report_dir, say, step).

check_carry() {  # every file the pack listed, unchanged, and the whole within 64 MiB
    [ -f "$carry/MANIFEST.sha256" ] || { say "carry: no $carry/MANIFEST.sha256 (run deploy/gpu/pack.sh here first)"; return 1; }
    (cd "$carry" && sha256sum --quiet -c MANIFEST.sha256) || { say "carry: files missing or changed"; return 1; }
    local bytes
    bytes="$(du -sb "$carry" | cut -f1)"
    say "carry: $(wc -l < "$carry/MANIFEST.sha256") files, $((bytes / 1048576)) MiB (limit 64), Iris $(cut -c1-12 "$carry/iris-commit.txt")"
    [ "$bytes" -le $((64 * 1048576)) ] || { say "carry: over 64 MiB"; return 1; }
    ls "$carry"/llama_cpp_python-*.tar.gz "$carry"/wheels/iris_llm-*.whl > /dev/null || return 1
    local members
    members="$(tar tzf "$carry"/llama_cpp_python-*.tar.gz)"
    for need in CMakeLists.txt vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt vendor/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu; do
        grep -q "/$need\$" <<< "$members" || { say "carry: the sdist lacks $need"; return 1; }
    done
    say "carry: sdist has CMakeLists and $(grep -c 'ggml-cuda/.*\.cu$' <<< "$members") ggml-cuda .cu files"
}

# pip resolves the requirements from the carry alone, for Python 3.12. As run.sh installs them: the list,
# then the Iris wheel with --no-deps (its pins on llama-cpp-python, the Gemma model and matplotlib are the
# sdist built there and two things left out on purpose; see deploy/gpu/requirements.py).
check_wheels_resolve() {
    local py312="${PYTHON312:-$(command -v python3.12 || true)}"
    if [ -n "$py312" ] && "$py312" --version > /dev/null 2>&1; then
        say "wheels: resolving with $("$py312" --version) offline (pip install --dry-run)"
        "$py312" -m pip install --dry-run --quiet --no-index --find-links "$carry/wheels" --ignore-installed \
            --report - -r "$carry/requirements.txt" 2> "${TMPDIR:-/tmp}/gpu-resolve.err" \
            | "$py312" -c 'import json,sys; r=json.load(sys.stdin)["install"]; print(f"wheels: {len(r)} would install:", " ".join(sorted(i["metadata"]["name"]+"=="+i["metadata"]["version"] for i in r)))' \
            || { cat "${TMPDIR:-/tmp}/gpu-resolve.err"; return 1; }
    else
        say "wheels: no Python 3.12 here; checking tags instead"
        local bad
        bad="$(ls "$carry/wheels" | grep -v -E -- '-(py3|cp312|cp3[0-9]*-abi3)-.*(none-any|manylinux[_0-9]*x86_64.*)\.whl$' || true)"
        [ -z "$bad" ] || { say "wheels: not for CPython 3.12 x86_64: $bad"; return 1; }
        say "wheels: $(ls "$carry/wheels" | wc -l) wheels, all tagged py3/cp312/abi3, any or manylinux x86_64"
    fi
}

check_tools() {  # what the build needs; on the CPU machine the last check is where a dry run stops
    local tool
    for tool in python3.12 cmake ninja nvcc nvidia-smi; do
        if command -v "$tool" > /dev/null && "$tool" --version > /dev/null 2>&1; then
            say "tools: $tool: $("$tool" --version 2>&1 | grep -m1 -i -E 'version|release|python|^[0-9]')"
        else
            say "tools: $tool: not here"
        fi
    done
    nvidia-smi -L 2> /dev/null | sed 's/^/tools: gpu: /' | grep . || say "tools: no GPU visible (nvidia-smi -L)"
}

# Hook for resumable generation (issue 19): once the installed Iris has a bench that measures
# suspend/resume, run it at 1k and 4k context. It runs only if `iris bench preemption` exists; if that
# bench lands under another name or flags, change the two lines below.
measure_preemption() {
    if "$venv/bin/iris" bench preemption --help > /dev/null 2>&1; then
        step preemption "$PREEMPT_S" "$venv/bin/iris" bench preemption --model "$model" --n-gpu-layers -1 \
            --context 1024,4096 --out "$report_dir/preemption.json"
    else
        say "preemption: this Iris has no \`iris bench preemption\`; suspend/resume not measured"
        echo "preemption|not in this Iris|0" >> "$report_dir/steps.txt"
    fi
}

# Where nvcc is there but no GPU (the dry run): configure the trimmed sdist for CUDA with CMake, no
# compiling. It reads every CMakeLists the CUDA build reads; a file the trim cut too deep shows up here.
check_cuda_configure() {
    command -v nvcc > /dev/null || { say "configure: no nvcc here; not tried"; return 0; }
    local tree log="${TMPDIR:-/tmp}/gpu-configure.log"
    tree="$(mktemp -d)"
    tar xzf "$carry"/llama_cpp_python-*.tar.gz -C "$tree"
    say "configure: cmake -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 on the trimmed sdist (no build)"
    timeout 180 cmake -S "$tree"/llama_cpp_python-* -B "$tree/build" -G Ninja -DGGML_CUDA=on \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" > "$log" 2>&1
    local rc=$? errors
    errors="$(grep -A3 'CMake Error' "$log" | grep -v -E '^\s*$|^--$' | tr -s ' ' | head -8)"
    grep -q -- '-- Configuring done' "$log" && say "configure: CMake read every CMakeLists (Configuring done)"
    [ "$rc" = 0 ] && say "configure: ok" || say "configure: exit $rc here: ${errors:-see $log}"
    rm -rf "$tree"
}
