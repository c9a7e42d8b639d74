#!/usr/bin/env bash
# Regenerates include/livemig.h from the crate's source with cbindgen (run
# after changing the exported API; the test suite fails while it is stale).
set -euo pipefail
cd "$(dirname "$0")/../.."
LIVEMIG_REGENERATE_HEADER=1 cargo test -p livemig-c --test header -- --nocapture
