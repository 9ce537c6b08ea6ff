#!/usr/bin/env bash
# Builds the ladle-scheduler and ladle-agent container images from this checkout's binaries,
# with no base image (none can be pulled here, and none is needed): each image holds its binary,
# the shared libraries it links (taken from this machine), a non-root user and a state directory.
# The agent runs a job's executable, shipped by its driver, inside its own container: the
# executable must be a Linux build against the same or an older C library as this machine's.
#
# Each image is tagged with the release (as the Kubernetes manifests name it) and with TAG
# (default latest, as compose names it). --gpu also builds ladle-agent-gpu on a CUDA runtime
# image (Dockerfile.agent-gpu; CUDA_BASE names it), which must be pullable or loaded already.
#
#   deploy/docker/build.sh [--tag TAG] [--debug] [--gpu]
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=latest
profile=release
gpu=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --debug) profile=debug; shift ;;
    --gpu) gpu=1; shift ;;
    *) echo "usage: $0 [--tag TAG] [--debug] [--gpu]" >&2; exit 2 ;;
  esac
done
# Cargo's output, wherever CARGO_TARGET_DIR puts it.
target_dir="${CARGO_TARGET_DIR:-target}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

if [[ "$profile" == release ]]; then
  cargo build --release --quiet -p ladle-scheduler -p ladle-agent
else
  cargo build --quiet -p ladle-scheduler -p ladle-agent
fi

# Debug information stays on the build machine: the images carry stripped binaries.
install_binary() {
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$2" "$1"
  else
    cp "$1" "$2"
  fi
}

for name in scheduler agent; do
  binary="$target_dir/$profile/ladle-$name"
  context="$target_dir/docker/$name"
  rm -rf "$context"
  mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc" "$context/rootfs/tmp" \
    "$context/state/ladle/$name"
  install_binary "$binary" "$context/rootfs/usr/local/bin/ladle-$name"
  # The agent image carries the CLI too: operators exec into any node to look at the cluster.
  if [[ "$name" == agent ]]; then
    install_binary "$target_dir/$profile/ladle-scheduler" "$context/rootfs/usr/local/bin/ladle-scheduler"
  fi
  for lib in $(ldd "$binary" | grep -o '/[^ ]*' | sort -u); do
    cp --parents -L "$lib" "$context/rootfs/"
  done
  # Jobs' executables run in the agent's container: it carries the whole C runtime a Rust program
  # may link, not only the part the agent itself happens to (built with LTO, it needs no libm).
  if [[ "$name" == agent ]]; then
    libdir=$(dirname "$(ldd "$binary" | grep -o '/[^ ]*/libc\.so\.6' | head -n 1)")
    for lib in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1; do
      if [[ -e "$libdir/$lib" ]]; then
        cp --parents -L "$libdir/$lib" "$context/rootfs/"
      fi
    done
  fi
  chmod 1777 "$context/rootfs/tmp"
  echo "root:x:0:0:root:/:/sbin/nologin" > "$context/rootfs/etc/passwd"
  echo "ladle:x:10001:10001:ladle:/var/lib/ladle:/sbin/nologin" >> "$context/rootfs/etc/passwd"
  printf 'root:x:0:\nladle:x:10001:\n' > "$context/rootfs/etc/group"
  cp "deploy/docker/Dockerfile.$name" "$context/Dockerfile"
  if ! log=$(docker build --quiet --tag "ladle-$name:$tag" --tag "ladle-$name:$version" "$context" 2>&1); then
    echo "$log" >&2
    exit 1
  fi
  size=$(docker image inspect "ladle-$name:$tag" --format '{{.Size}}')
  echo "built ladle-$name:$tag and :$version ($((size / 1024 / 1024)) MiB)"
done

if [[ "$gpu" == 1 ]]; then
  cp deploy/docker/Dockerfile.agent-gpu "$target_dir/docker/agent/Dockerfile.gpu"
  build_args=()
  [[ -n "${CUDA_BASE:-}" ]] && build_args=(--build-arg "CUDA_BASE=$CUDA_BASE")
  if ! log=$(docker build --quiet "${build_args[@]}" --file "$target_dir/docker/agent/Dockerfile.gpu" \
      --tag "ladle-agent-gpu:$tag" --tag "ladle-agent-gpu:$version" "$target_dir/docker/agent" 2>&1); then
    echo "$log" >&2
    echo "the GPU agent's image needs its CUDA base image (${CUDA_BASE:-nvidia/cuda:12.8.1-runtime-ubuntu24.04}) pullable or loaded" >&2
    exit 1
  fi
  echo "built ladle-agent-gpu:$tag and :$version"
fi
