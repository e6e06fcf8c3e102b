#!/usr/bin/env bash
# A one-node highlander on loopback, with two local HTTP instances ("primary"
# on 127.0.0.1:9001, "backup" on 127.0.0.1:9002) to fail over between.
# Ctrl-C stops everything this script started.
#
# In another terminal:
#   dig @127.0.0.1 -p 5301 +norec app.svc.example. A
#   dig @127.0.0.1 -p 5301 +short _highlander.app.svc.example. TXT
#   kill "$(cat examples/data/primary.pid)"        # fail over to backup
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
mkdir -p examples/data
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for instance in primary:9001 backup:9002; do
    name=${instance%%:*}
    port=${instance##*:}
    mkdir -p "examples/data/www-$name"
    echo "$name" > "examples/data/www-$name/index.html"
    python3 -m http.server --bind 127.0.0.1 "$port" --directory "examples/data/www-$name" >/dev/null 2>&1 &
    pids+=($!)
    echo $! > "examples/data/$name.pid"
    echo "instance $name: http://127.0.0.1:$port/ (pid $!)"
done

./target/release/highlander run --config examples/single-node.toml --node-id 1 &
pids+=($!)
wait "${pids[-1]}"
