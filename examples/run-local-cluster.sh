#!/usr/bin/env bash
# A three-node highlander cluster on loopback (DNS on 127.0.0.1:5301-5303,
# status on http://127.0.0.1:8101-8103/v1/status), with two local HTTP
# instances ("primary" on 127.0.0.1:9001, "backup" on 127.0.0.1:9002) to fail
# over between. Ctrl-C stops everything this script started.
#
# In another terminal:
#   dig @127.0.0.1 -p 5301 +norec app.svc.example. A
#   dig @127.0.0.1 -p 5302 +short _highlander.app.svc.example. TXT
#   curl -s http://127.0.0.1:8101/v1/status
#   kill "$(cat examples/data/primary.pid)"        # fail over to backup
#   kill -9 "$(cat examples/data/node-1.pid)"      # kill a coordinator (maybe the leader)
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

for id in 1 2 3; do
    ./target/release/highlander run --config examples/cluster.toml --node-id "$id" \
        2> "examples/data/node-$id.log" &
    pids+=($!)
    echo $! > "examples/data/node-$id.pid"
    echo "node $id: dns 127.0.0.1:530$id, status http://127.0.0.1:810$id/v1/status (pid $!, log examples/data/node-$id.log)"
done
echo "Ctrl-C stops everything. Decisions as they are committed:"
tail -n +1 -F examples/data/node-*.log 2>/dev/null | grep --line-buffered -E "committed|leadership|SERVFAIL|answering" &
pids+=($!)
wait "${pids[@]:0:5}"
