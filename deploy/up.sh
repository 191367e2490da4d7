#!/usr/bin/env bash
# Build the images and start the compose stack on this machine, from nothing but Debian's and PyPI's packages:
#   deploy/up.sh            make the base image (once), the wheels, the images, then `docker compose up -d`
#   deploy/up.sh --build    the same without starting the stack
#   deploy/up.sh --down     `docker compose down` (volumes kept; add -v by hand to drop the JetStream data)
#
# Steps, each skipped when its result is there already:
#   1. base image `iris-base:bookworm`: `debootstrap --variant=minbase bookworm` with Python 3.11 and libgomp,
#      then `docker import` (no registry needed; about a minute).
#   2. wheels for Iris and every dependency in deploy/docker/wheels/, built on this host with its pip settings
#      and cache, so the image build installs offline and never compiles llama-cpp-python again.
#   3. images `iris:latest` (every Iris service and nats-server) and `iris-prometheus:latest` (Debian's package).
#   4. `docker compose -f deploy/compose.yaml up -d` and a wait until every service reports healthy.
# Needs: docker (an engine running), debootstrap, python3 with venv. IRIS_BASE_IMAGE=python:3.11-slim builds
# from the public image instead of a local base.
set -euo pipefail
cd "$(dirname "$0")/.."
export IRIS_BASE_IMAGE="${IRIS_BASE_IMAGE:-iris-base:bookworm}"
export IRIS_PIP_ARGS="${IRIS_PIP_ARGS:---no-index}"
wheels=deploy/docker/wheels
compose() {
    if docker compose version >/dev/null 2>&1; then docker compose -p iris -f deploy/compose.yaml "$@"
    else docker-compose -p iris -f deploy/compose.yaml "$@"; fi
}

if [ "${1:-}" = "--down" ]; then compose down; exit 0; fi

if [ "$IRIS_BASE_IMAGE" = "iris-base:bookworm" ] && ! docker image inspect iris-base:bookworm >/dev/null 2>&1; then
    echo "up: making iris-base:bookworm with debootstrap" >&2
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >/dev/null
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import - iris-base:bookworm >/dev/null
fi

if [ "$IRIS_PIP_ARGS" = "--no-index" ] && ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "up: building wheels into $wheels (llama-cpp-python comes from pip's cache when built before)" >&2
    venv=$(mktemp -d)
    python3 -m venv "$venv"
    "$venv"/bin/pip install --quiet --upgrade pip
    "$venv"/bin/pip wheel --quiet --wheel-dir "$wheels" . "setuptools>=68"  # setuptools: to build Iris offline
    rm -f "$wheels"/iris_llm-*.whl  # the image builds Iris from the sources it copies
    rm -rf "$venv"
fi

echo "up: building iris:latest and iris-prometheus:latest from $IRIS_BASE_IMAGE" >&2
docker build --quiet --network host -f deploy/docker/Dockerfile -t iris:latest \
    --build-arg BASE_IMAGE="$IRIS_BASE_IMAGE" --build-arg PIP_ARGS="$IRIS_PIP_ARGS" . >/dev/null
prom_base="$IRIS_BASE_IMAGE"
[ "$prom_base" = "python:3.11-slim" ] && prom_base=debian:bookworm-slim
docker build --quiet --network host -f deploy/docker/Dockerfile.prometheus -t iris-prometheus:latest \
    --build-arg BASE_IMAGE="$prom_base" deploy >/dev/null

if [ "${1:-}" = "--build" ]; then exit 0; fi
compose up -d
echo "up: waiting for every service to be healthy" >&2
for _ in $(seq 1 120); do
    states=$(docker ps --filter label=com.docker.compose.project=iris --format '{{.Names}} {{.Status}}')
    if grep -q "(healthy)" <<<"$states" && ! grep -qE "health: starting|unhealthy" <<<"$states"; then
        echo "$states" >&2
        echo "up: ready: http://127.0.0.1:8080 (Ollama and OpenAI APIs), nats://127.0.0.1:4222" >&2
        exit 0
    fi
    sleep 2
done
echo "$states" >&2
echo "up: not every service became healthy in 240 s; see: docker logs <name>" >&2
exit 1
