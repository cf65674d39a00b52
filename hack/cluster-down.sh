#!/usr/bin/env bash
# Stop every process hack/cluster-up.sh DIR started (newest first: TERM, then KILL after 10 s) and
# wait until none is left, so no process or port stays behind. State files under DIR are kept for
# post-mortems; remove DIR yourself. Safe to run twice, or on a half-started cluster.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
pids_file="$1/pids"
[[ -f "$pids_file" ]] || exit 0

# Newest first: kwok and the controllers before the API server, etcd last.
mapfile -t lines < <(tac "$pids_file")
for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    [[ -n "${pid:-}" ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "cluster-down: $name ($pid) ignored SIGTERM for 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
done
: > "$pids_file"
