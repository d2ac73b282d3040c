#!/usr/bin/env bash
# Quick start: installs what is missing, builds isoproxy, and shows it doing
# its real job on this machine alone. A local responder behaves like the
# vendor MTA of KB Q151626 (its CONNECT CONFIRM carries TPKT reserved byte
# 0x11); a strict client (as libiec61850 is) refuses it when connecting
# directly, and succeeds through isoproxy, which zeroes the byte in flight.
#
# Ports: 127.0.0.1:11102 (the responder) and 127.0.0.1:10102 (isoproxy);
# override with DEMO_UPSTREAM_PORT / DEMO_PROXY_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
up_port=${DEMO_UPSTREAM_PORT:-11102}
proxy_port=${DEMO_PROXY_PORT:-10102}

packaging/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target isoproxy rfc1006-peer >/dev/null
echo "built: $(build/isoproxy --version)"

demo=$root/build/demo
mkdir -p "$demo"
cat >"$demo/isoproxy.toml" <<TOML
# The demo's configuration: conf/examples/vendor-reserved-byte.toml, cut down
# to one local listener. To put isoproxy in front of a real MTA, change
# "upstream" to that MTA's address (and "listen" to "0.0.0.0:102").
[admin]
listen = "127.0.0.1:0"   # live stats on a free port (the log names it); default 127.0.0.1:9102

[[listener]]
name = "demo"
listen = "127.0.0.1:$proxy_port"
upstream = "127.0.0.1:$up_port"
filters = ["reserved", "annotate"]

[filter.reserved]
kind = "tpkt-reserved"
tpdu = ["CC"]

[filter.annotate]
kind = "tsap-annotate"
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Waits (up to 10 s) for a line matching $2 in file $1.
wait_for() { for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
             echo "demo: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; }

build/tests/rfc1006-peer respond --listen "127.0.0.1:$up_port" --reserved 0x11 >"$demo/responder.log" 2>&1 &
pids+=($!)
wait_for "$demo/responder.log" "listening on"

echo
echo "== 1. a strict client straight to the vendor MTA (reserved byte 0x11 in its CC):"
build/tests/rfc1006-peer connect --to "127.0.0.1:$up_port" --strict || echo "   -> the strict client refused the vendor's CC (exit $?), as foreign MTAs do"

build/isoproxy run -c "$demo/isoproxy.toml" 2>"$demo/isoproxy.log" &
pids+=($!)
wait_for "$demo/isoproxy.log" "isoproxy ready"

echo
echo "== 2. the same client through isoproxy (127.0.0.1:$proxy_port -> 127.0.0.1:$up_port):"
build/tests/rfc1006-peer connect --to "127.0.0.1:$proxy_port" --strict
wait_for "$demo/isoproxy.log" "close reason="

echo
echo "== 3. what isoproxy logged (build/demo/isoproxy.log):"
cat "$demo/isoproxy.log"
echo
echo "The run config is build/demo/isoproxy.toml; 'build/isoproxy run -c FILE' runs it in the foreground."
