#!/usr/bin/env bash
# A user's own crate, outside this workspace, made from the README's "Writing a job" section
# (its Cargo.toml and its first program): built with the release profile the README recommends,
# then run on the embedded cluster; and the same without the embedded cluster (remote only),
# checked and its crates counted.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dir=target/user-crate
rm -rf "$dir"
mkdir -p "$dir/src"

# The README's TOML block, its path made to point here, and its first Rust block.
python3 - "$repo" "$dir" <<'PY'
import re, sys
repo, out = sys.argv[1], sys.argv[2]
readme = open(f"{repo}/README.md").read()
section = readme[readme.index("## Writing a job"):]
toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
program = re.search(r"```rust[^\n]*\n(.*?)```", section, re.S).group(1)
toml = toml.replace('path = "../ladle/sdk"', f'path = "{repo}/sdk"')
manifest = '[package]\nname = "my-job"\nversion = "0.1.0"\nedition = "2024"\n\n[workspace]\n\n' + toml
open(f"{out}/Cargo.toml", "w").write(manifest)
open(f"{out}/src/main.rs", "w").write(program)
PY

# Shares this checkout's build directory: the dependencies built for the binaries are reused.
export CARGO_TARGET_DIR="$repo/target"
started=$(date +%s)
cargo build --quiet --release --manifest-path "$dir/Cargo.toml"
echo "user crate: built with the README's release profile in $(( $(date +%s) - started )) s"
env -u LADLE_SCHEDULER -u LADLE_SCHEDULER_FILE "$repo/target/release/my-job"
echo "user crate: ran on the embedded cluster"

sed -i 's|^ladle = { path = "\(.*\)" }$|ladle = { path = "\1", default-features = false }|' "$dir/Cargo.toml"
grep -q 'default-features = false' "$dir/Cargo.toml"
cargo check --quiet --manifest-path "$dir/Cargo.toml"
crates=$(cargo tree --manifest-path "$dir/Cargo.toml" -e normal,build --prefix none | sed 's/ (\*)//' | sort -u | wc -l)
echo "user crate: remote only (default-features = false) builds with $crates crates, no scheduler or agent"
if cargo tree --manifest-path "$dir/Cargo.toml" -e normal --prefix none | grep -q '^ladle-\(scheduler\|agent\) '; then
  echo "user crate: the remote-only build still depends on the scheduler or the agent" >&2
  exit 1
fi
