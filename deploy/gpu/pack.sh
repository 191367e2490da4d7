#!/usr/bin/env bash
# Build the GPU carry (deploy/gpu/carry/, git-ignored): everything deploy/gpu/run.sh needs on a GPU
# machine with no internet, in at most 64 MiB. Run here, from anywhere, with PyPI reachable:
#   deploy/gpu/pack.sh            # then: run(carry=["deploy/gpu/carry"], command="deploy/gpu/run.sh")
# Downloads are kept in deploy/gpu/.download/ (also git-ignored), so a second pack is quick.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/deploy/gpu"
carry="$here/carry"
download="$here/.download"
limit_mib=64
python="${PYTHON:-python3}"
llama_version="$("$python" -c 'import re,sys,tomllib; d=tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]
print(next(re.split("==",r)[1] for r in d if r.startswith("llama-cpp-python==")))' "$root/pyproject.toml")"
sdist="llama_cpp_python-$llama_version"
platforms=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

mkdir -p "$download" && rm -rf "$carry" && mkdir -p "$carry/wheels"
echo "pack: llama-cpp-python $llama_version sdist (73 MiB; kept in $download)"
[ -f "$download/$sdist.tar.gz" ] || "$python" -m pip download --quiet --no-deps \
    --no-binary llama-cpp-python --only-binary scikit-build-core "llama-cpp-python==$llama_version" -d "$download"

echo "pack: trimming the sdist to what a CUDA build needs"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar xzf "$download/$sdist.tar.gz" -C "$work"
"$python" "$here/trim.py" "$work/$sdist"
tar czf "$carry/$sdist.tar.gz" -C "$work" "$sdist"

echo "pack: wheels for Python 3.12 manylinux x86_64"
"$python" "$here/requirements.py" "$root/pyproject.toml" "$work/$sdist/pyproject.toml" > "$carry/requirements.txt"
"$python" -m pip download --quiet --only-binary :all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -r "$carry/requirements.txt" -d "$download/wheels"
# Only what this requirements list resolves to: an older pack's extra wheels stay out of the carry.
"$python" -m pip download --quiet --only-binary :all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -r "$carry/requirements.txt" --no-index --find-links "$download/wheels" -d "$carry/wheels"

echo "pack: the Iris wheel of this checkout ($(git -C "$root" rev-parse --short HEAD))"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation "$root" -w "$carry/wheels" 2>/dev/null \
    || "$python" -m pip wheel --quiet --no-deps "$root" -w "$carry/wheels"
git -C "$root" rev-parse HEAD > "$carry/iris-commit.txt"
echo "$llama_version" > "$carry/llama-cpp-python-version.txt"

(cd "$carry" && find . -type f ! -name MANIFEST.sha256 -print0 | sort -z | xargs -0 sha256sum > MANIFEST.sha256)
size_bytes="$(du -sb "$carry" | cut -f1)"
size_mib="$(awk -v b="$size_bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
echo "pack: $(wc -l < "$carry/MANIFEST.sha256") files, $size_mib MiB in $carry (limit $limit_mib MiB)"
du -sh "$carry"/* | sort -h | tail -5 | sed 's/^/pack:   /'
if [ "$size_bytes" -gt $((limit_mib * 1048576)) ]; then
    echo "pack: FAILED: the carry is over $limit_mib MiB" >&2
    exit 1
fi
