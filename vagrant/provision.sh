#!/usr/bin/env bash
# Provisioning of the Vagrant VM: a Rust toolchain, then the project's own
# scripts/setup and scripts/test (the same commands CI runs).
set -euo pipefail
if ! command -v cargo >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends curl ca-certificates build-essential
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
fi
export PATH=$HOME/.cargo/bin:$PATH
cd /livemig
scripts/setup
scripts/test
