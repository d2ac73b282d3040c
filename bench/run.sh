#!/usr/bin/env bash
# bench/run.sh: isoproxy, HAProxy and socat side by side on loopback, in one
# run, with the same load generator (issue 7); and the live-stats measurement
# of issue 5. Prints one table with ratios to HAProxy and writes it, with the
# machine, the load, the exact commands and the profile, to bench/RESULTS.md.
#
#   bench/run.sh [options] [WORKLOAD...]
#
# WORKLOAD: throughput pingpong connrate idle livestats tls workers profile (default: all).
# Options:
#   --quick           smaller counts and shorter runs, to try the harness (rougher figures)
#   --repeat N        passes of the comparison, the table shows medians (default 5; 1 with --quick)
#   --relays LIST     comma-separated subset of isoproxy,isoproxy-framed,isoproxy-bare,haproxy,socat,floor
#                     (default: all; floor, bench/floor.cpp, runs the connection rate only)
#   --no-build        use the binaries already built in the build directory
#   --build-dir DIR   default build-bench (Release, tests off)
#   --max-load X      wait until the 1-minute load average is below X first (default 1.5)
#   --wait-max S      wait at most S seconds for that (default 600; 0: do not wait)
#   --results FILE    where to write the results (default bench/RESULTS.md); "-": print only
#   --port N          first of the three loopback ports used (default 23100)
#   --workers N       isoproxy's [global] workers in every isoproxy configuration (default 1);
#                     the `workers` workload compares 1 and 2 whatever this says
# Everything the run starts is stopped by its pid when it ends or is interrupted.
# See bench/README.md for what each column means.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

quick=0
relays_arg="isoproxy,isoproxy-framed,isoproxy-bare,haproxy,floor,socat"  # the floor next to HAProxy: see bench/README.md
build=1
build_dir="build-bench"
max_load=1.5
wait_max=600
results=bench/RESULTS.md
port=23100
repeat=""
workers=1
workloads=()

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --repeat) repeat=${2:?--repeat needs a count}; shift ;;
    --relays) relays_arg=${2:?--relays needs a list}; shift ;;
    --no-build) build=0 ;;
    --build-dir) build_dir=${2:?}; shift ;;
    --max-load) max_load=${2:?}; shift ;;
    --wait-max) wait_max=${2:?}; shift ;;
    --results) results=${2:?}; shift ;;
    --port) port=${2:?}; shift ;;
    --workers) workers=${2:?--workers needs a count}; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    throughput|pingpong|connrate|idle|livestats|tls|workers|profile) workloads+=("$1") ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done
[[ ${#workloads[@]} -eq 0 ]] && workloads=(throughput pingpong connrate idle livestats tls workers profile)
[[ $workers =~ ^[1-9][0-9]*$ && $workers -le 64 ]] || die "--workers takes a count from 1 to 64"
IFS=, read -r -a relays <<< "$relays_arg"
for r in "${relays[@]}"; do
  case "$r" in isoproxy|isoproxy-framed|isoproxy-bare|haproxy|socat|floor) ;; *) die "unknown relay: $r (isoproxy, isoproxy-framed, isoproxy-bare, haproxy, socat, floor)" ;; esac
done
want() { local w; for w in "${workloads[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }
has_relay() { local r; for r in "${relays[@]}"; do [[ $r == "$1" ]] && return 0; done; return 1; }

# Sizes of each workload: full, or --quick.
if [[ $quick -eq 1 ]]; then
  tp_bytes=500000000; pp_count=5000; cr_count=3000; idle_n=1000; idle_socat=200
  ls_sessions=200; ls_closed=200; ls_requests=50; ls_stream=3; ls_rounds=1
  prof_bytes=1000000000; prof_conns=5000; : "${repeat:=1}"
else
  tp_bytes=4000000000; pp_count=50000; cr_count=20000; idle_n=9000; idle_socat=1000
  ls_sessions=1000; ls_closed=1000; ls_requests=200; ls_stream=8; ls_rounds=2
  prof_bytes=4000000000; prof_conns=20000; : "${repeat:=5}"
fi
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat takes a count from 1"
server_port=$port relay_port=$((port + 1)) admin_port=$((port + 2)) hop_port=$((port + 3))
server=127.0.0.1:$server_port relay=127.0.0.1:$relay_port admin=127.0.0.1:$admin_port
pin_cpu=$(( $(nproc) - 1 ))   # ping-pong: relay and generator both on this CPU
# Connection rate: the relay on pin_cpu, the generator on CPU 0. Left to the
# scheduler, the same relay measured either about 38 or about 59 µs per
# session from one run to the next (both relays, whichever way the two
# processes were placed); pinned, the figure repeats within 1 %.
cr_gen_cpu=0 cr_relay_cpu=$pin_cpu
# With --workers N > 1 the relay's loops need more than one CPU: neither is pinned then.
if [[ $workers -gt 1 ]]; then cr_gen_cpu="" cr_relay_cpu=""; fi

# --- tools -------------------------------------------------------------------
# haproxy and socat from Debian, like packaging/deps.sh: only what is missing.
missing=()
for p in haproxy socat linux-perf; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing ${missing[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]]; then
    $sudo apt-get update -qq
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
packaging/deps.sh
for t in haproxy socat perf taskset ss timeout; do command -v "$t" >/dev/null || die "$t not found"; done

if [[ $build -eq 1 ]]; then
  say "building (Release) in $build_dir"
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DISOPROXY_TESTS=OFF -DISOPROXY_BENCH=ON >/dev/null
  cmake --build "$build_dir" -j2 --target isoproxy isoproxy-loadgen isoproxy-floor >/dev/null
fi
iso=$root/$build_dir/isoproxy
lg=$root/$build_dir/bench/isoproxy-loadgen
floor=$root/$build_dir/bench/isoproxy-floor
[[ -x $iso && -x $lg ]] || die "$iso or $lg missing: build first (without --no-build)"
if has_relay floor && want connrate && [[ ! -x $floor ]]; then die "$floor missing: build first (without --no-build)"; fi

for p in $server_port $relay_port $admin_port $hop_port; do
  [[ -z "$(ss -Htln "sport = :$p")" ]] || die "port $p is in use: choose others with --port"
done

# What is measured: the commit, and whether the tree differed from it (the
# results file itself aside, which this run rewrites).
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then
  revision+=" with uncommitted changes"
fi

run_dir=$root/$build_dir/bench-run-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$run_dir"
out=$run_dir/results.txt
cmds=$run_dir/commands.txt
: > "$out"; : > "$cmds"
say "run directory $run_dir"

# --- cleanup: only what this run started, by pid ------------------------------
started=()
relay_pid=""
cleanup() {
  local p
  for p in "${started[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the machine --------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
wait_quiet() {
  local waited=0
  while ! below "$(load1)" "$max_load"; do
    if [[ $waited -ge $wait_max ]]; then
      say "load average $(load1) still above $max_load after ${waited}s: measuring anyway (noted in the results)"
      return
    fi
    [[ $((waited % 60)) -eq 0 ]] && say "load average $(load1) >= $max_load: waiting (at most ${wait_max}s)"
    sleep 5; waited=$((waited + 5))
  done
}
# Before each pass: the CPUs other processes used over 2 s, from /proc/stat
# (nothing of this run is running then). Waits, at most 120 s, for it to be
# under 0.2 CPUs; the table's notes give each run's own figure anyway.
others_now() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat); sleep 2
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat)
  awk -v a="$a" -v b="$b" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz / 2 }'
}
wait_idle() {
  local waited=0 o
  while o=$(others_now); ! below "$o" 0.2; do
    if [[ $waited -ge 120 ]]; then
      say "other processes still use $o CPUs: measuring anyway"
      return
    fi
    [[ $((waited % 30)) -eq 0 ]] && say "other processes use $o CPUs: waiting for a quieter moment (at most 120 s)"
    sleep 3; waited=$((waited + 5))
  done
}
wait_quiet
load_start=$(load1)
say "load average at start: $load_start"

# --- relays -------------------------------------------------------------------
iso_config() {  # $1: default | bare, $2: workers (default --workers)
  # The shipped default configuration, pointed at the bench's ports.
  sed -e "s|^listen = \"0.0.0.0:102\"|listen = \"$relay\"|" \
      -e "s|^upstream = \"192.0.2.10:102\"|upstream = \"$server\"|" \
      -e "/^\[global\]\$/a workers = ${2:-$workers}" conf/isoproxy.toml
  if [[ $1 == default ]]; then
    printf '\n[admin]\nlisten = "%s"\n' "$admin"
  else
    printf '\n[admin]\nlisten = "off"\nclosed_sessions = 0\n'
  fi
}
write_configs() {
  iso_config default > "$run_dir/isoproxy.toml"
  iso_config bare | sed -e 's|^filters = \["reserved", "annotate"\]|filters = []|' > "$run_dir/isoproxy-bare.toml"
  # A filter that must see every frame of the data phase: the reserved-byte
  # repair on every TPDU type, so the relay frames and checks each DT.
  iso_config default | sed -e 's|^tpdu = \["CC"\]|tpdu = ["any"]|' > "$run_dir/isoproxy-framed.toml"
  grep -q "^listen = \"$relay\"" "$run_dir/isoproxy.toml" && grep -q '^filters = \[\]' "$run_dir/isoproxy-bare.toml" \
    && grep -q '^tpdu = \["any"\]' "$run_dir/isoproxy-framed.toml" \
    || die "conf/isoproxy.toml changed shape: the bench's edits of listen/upstream/filters no longer apply"
  "$iso" check -c "$run_dir/isoproxy.toml" >/dev/null && "$iso" check -c "$run_dir/isoproxy-bare.toml" >/dev/null \
    && "$iso" check -c "$run_dir/isoproxy-framed.toml" >/dev/null \
    || die "the bench's isoproxy configurations do not check"
  # The workers workload: the default configuration with one and with two event loops.
  iso_config default 1 > "$run_dir/isoproxy-1w.toml"
  iso_config default 2 > "$run_dir/isoproxy-2w.toml"
  grep -q "^listen = \"$relay\"" "$run_dir/isoproxy.toml" && grep -q '^filters = \[\]' "$run_dir/isoproxy-bare.toml" \
    && grep -q '^workers = 2$' "$run_dir/isoproxy-2w.toml" \
    || die "conf/isoproxy.toml changed shape: the bench's edits of listen/upstream/filters/[global] no longer apply"
  local c
  for c in isoproxy isoproxy-bare isoproxy-1w isoproxy-2w; do
    "$iso" check -c "$run_dir/$c.toml" >/dev/null || die "the bench's isoproxy configuration $c.toml does not check"
  done
  cat > "$run_dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9500
    ulimit-n 20000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend bench
    bind $relay
    default_backend responder
backend responder
    server responder $server
EOF
}
write_configs

# Issue 6: TLS next to plaintext. One isoproxy with two listeners in a chain,
# generator -> front (plaintext) -> back -> responder, the hop between them
# plaintext (isoproxy-chain) or TLS (isoproxy-tls, TLS 1.3, verified against
# a CA made here): the same process does both ends of the TLS hop, so its CPU
# per GB is the whole cost of encrypting and decrypting the stream once.
write_tls_configs() {
  local d=$run_dir/tls
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$d/hop.key" -out "$d/hop.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' > "$d/ext.cnf"
  openssl x509 -req -in "$d/hop.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/ext.cnf" -out "$d/hop.crt" 2>/dev/null
  local chain
  chain=$(printf '[global]\nworkers = %s\n\n[admin]\nlisten = "off"\nclosed_sessions = 0\n\n[[listener]]\nname = "front"\nlisten = "%s"\nupstream = "127.0.0.1:%s"\n' "$workers" "$relay" "$hop_port")
  { echo "$chain"; printf '\n[[listener]]\nname = "back"\nlisten = "127.0.0.1:%s"\nupstream = "%s"\n' "$hop_port" "$server"; } \
    > "$run_dir/isoproxy-chain.toml"
  { echo "$chain"
    printf '[listener.upstream_tls]\nca = "%s"\nmin_version = "1.3"\n' "$d/ca.crt"
    printf '\n[[listener]]\nname = "back"\nlisten = "127.0.0.1:%s"\nupstream = "%s"\n' "$hop_port" "$server"
    printf '[listener.tls]\ncert = "%s"\nkey = "%s"\nmin_version = "1.3"\n' "$d/hop.crt" "$d/hop.key"
  } > "$run_dir/isoproxy-tls.toml"
  "$iso" check -c "$run_dir/isoproxy-chain.toml" >/dev/null && "$iso" check -c "$run_dir/isoproxy-tls.toml" >/dev/null \
    || die "the bench's TLS configurations do not check"
}
if want tls; then write_tls_configs; fi

# Connection rate: each run's relay and responder listen on an address of
# their own in 127.0.0.0/8. The connections a run closes stay in TIME_WAIT
# for a minute, on the side that closed first (the generator's clients, the
# relay's upstream connections), and Linux's search for a source port to
# the same destination steps over them: on one shared address, every run
# would pay for the TIME_WAITs of the runs before it (a fifth of the relay's
# CPU in __inet_hash_connect by the end of a pass; and a generator slowed
# so leaves the relay idle between sessions, which costs it more per
# session). Toward fresh addresses, every run starts from an empty table.
fresh_base=$(( $(date +%s) % 20000 ))
fresh_count=0
fresh_server() {
  local n=$(( fresh_base + fresh_count ))
  fresh_count=$(( fresh_count + 1 ))
  local ip=127.0.$(( 100 + (n / 250) % 150 )).$(( 1 + n % 250 ))
  server=$ip:$server_port relay=$ip:$relay_port
  write_configs
}
default_server() {
  server=127.0.0.1:$server_port relay=127.0.0.1:$relay_port
  write_configs
}

relay_cmd() {  # $1: relay
  case "$1" in
    isoproxy) echo "$iso run -c $run_dir/isoproxy.toml" ;;
    isoproxy-bare) echo "$iso run -c $run_dir/isoproxy-bare.toml" ;;
    isoproxy-framed) echo "$iso run -c $run_dir/isoproxy-framed.toml" ;;
    isoproxy-1w) echo "$iso run -c $run_dir/isoproxy-1w.toml" ;;
    isoproxy-2w) echo "$iso run -c $run_dir/isoproxy-2w.toml" ;;
    isoproxy-chain) echo "$iso run -c $run_dir/isoproxy-chain.toml" ;;
    isoproxy-tls) echo "$iso run -c $run_dir/isoproxy-tls.toml" ;;
    haproxy) echo "haproxy -db -f $run_dir/haproxy.cfg" ;;
    socat) echo "socat TCP4-LISTEN:$relay_port,bind=${relay%:*},reuseaddr,fork,backlog=4096,nodelay TCP4:$server,nodelay" ;;
    floor) echo "$floor $relay $server" ;;
  esac
}

start_relay() {  # $1: relay, $2: log name, $3: CPU list to pin to (optional)
  local cmd pin=""
  cmd=$(relay_cmd "$1")
  if [[ -n ${3:-} ]]; then pin="taskset -c $3 "; fi
  echo "${pin}$cmd    # (ulimit -n 20000)" >> "$cmds"
  # shellcheck disable=SC2086
  ( ulimit -n 20000; exec $pin $cmd ) > "$run_dir/$2.log" 2>&1 &
  relay_pid=$!
  started+=("$relay_pid")
  local i
  for i in $(seq 100); do
    [[ -n "$(ss -Htln "sport = :$relay_port")" ]] && return 0
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$run_dir/$2.log" >&2
  die "$1 did not start listening on $relay"
}

stop_relay() {
  local p=$relay_pid kids i
  [[ -z $p ]] && return 0
  kids=$(ps -o pid= --ppid "$p" 2>/dev/null || true)  # socat's children, started by it for this run
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    say "pid $p did not stop within 15 s: killed"
    kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
  for i in $kids; do
    if kill -0 "$i" 2>/dev/null; then kill -KILL "$i" 2>/dev/null || true; fi
  done
  relay_pid=""
  # The responder's port is free again before the next relay starts.
  for i in $(seq 50); do [[ -z "$(ss -Htln "sport = :$server_port")" ]] && break; sleep 0.1; done
}

# Runs the generator against the running relay; its RESULT lines go to $out
# with the relay's name and the load average in front. $1: relay, $2: bound (s), rest: arguments.
loadgen() {
  local name=$1 bound=$2; shift 2
  local tree=() pin=()
  if [[ $name == socat ]]; then tree=(--tree); fi
  if [[ -n ${PIN:-} ]]; then pin=(taskset -c "$PIN"); fi
  local args=("$@" --relay "$relay" --server "$server" --pid "$relay_pid" "${tree[@]}")
  echo "${pin[*]:+${pin[*]} }$lg ${args[*]}" >> "$cmds"
  local l; l=$(load1)
  if ! ( ulimit -n 20000; timeout --kill-after=5 "$bound" "${pin[@]}" "$lg" "${args[@]}" ) \
      > "$run_dir/last.out" 2>> "$run_dir/loadgen.log"; then
    say "$name: $1 failed (see $run_dir/loadgen.log): $(tail -n1 "$run_dir/loadgen.log")"
    echo "RESULT relay=$name pass=${rep:-1} failed=$1 load=$l" >> "$out"
    return 0
  fi
  sed -e "s/^RESULT /RESULT relay=$name pass=${rep:-1} load=$l /" "$run_dir/last.out" | tee -a "$out" | sed 's/^RESULT /  /' >&2
}

label() {
  case "$1" in
    isoproxy) echo "isoproxy, default config" ;;
    isoproxy-bare) echo "isoproxy, no filters" ;;
    isoproxy-framed) echo "isoproxy, repair on every frame" ;;
    isoproxy-1w) echo "isoproxy, default config, workers = 1" ;;
    isoproxy-2w) echo "isoproxy, default config, workers = 2" ;;
    isoproxy-chain) echo "isoproxy, two listeners chained, plaintext hop" ;;
    isoproxy-tls) echo "isoproxy, two listeners chained, TLS 1.3 hop" ;;
    haproxy) echo "HAProxy 2.6, 1 thread" ;;
    socat) echo "socat (fork)" ;;
    floor) echo "floor: bare epoll relay (bench/floor.cpp)" ;;
  esac
}

# --- issue 7: the comparison ---------------------------------------------------
# The whole comparison runs $repeat times; within each pass the relays take
# turns on each workload, so that the ones compared ran close together. The
# table shows the median of the passes.
for pass in $(seq "$repeat"); do
  wait_idle
  rep=$pass
  if want throughput; then
    for c in 1 4; do
      for r in "${relays[@]}"; do
        [[ $r == floor ]] && continue  # the floor is the connection rate's yardstick only
        say "pass $pass/$repeat: $r: throughput, $c connection(s)"
        start_relay "$r" "$r-throughput-$c-$pass"
        loadgen "$r" 120 throughput --conns "$c" --bytes "$tp_bytes" --seconds 60
        stop_relay
      done
    done
  fi
  if want pingpong; then
    for r in "${relays[@]}"; do
      [[ $r == floor ]] && continue
      say "pass $pass/$repeat: $r: ping-pong, relay and generator on CPU $pin_cpu"
      start_relay "$r" "$r-pingpong-$pass" "$pin_cpu"
      PIN=$pin_cpu loadgen "$r" 120 pingpong --count "$pp_count" --warmup 1000 --size 64 --seconds 60
      stop_relay
    done
  fi
  if want connrate; then
    for r in "${relays[@]}"; do
      say "pass $pass/$repeat: $r: connection rate${cr_relay_cpu:+, relay on CPU $cr_relay_cpu, generator on CPU $cr_gen_cpu}"
      fresh_server
      start_relay "$r" "$r-connrate-$pass" "$cr_relay_cpu"
      PIN=$cr_gen_cpu loadgen "$r" 120 connrate --count "$cr_count" --concurrency 16 --seconds 60
      stop_relay
    done
    default_server
  fi
  if want tls; then
    for r in isoproxy-chain isoproxy-tls; do
      say "pass $pass/$repeat: $r: throughput, 1 connection"
      start_relay "$r" "$r-throughput-$pass"
      loadgen "$r" 120 throughput --conns 1 --bytes "$tp_bytes" --seconds 60
      stop_relay
    done
  fi
  if want workers; then
    # One event loop against two (SO_REUSEPORT): the same default config.
    for r in isoproxy-1w isoproxy-2w; do
      say "pass $pass/$repeat: $r: throughput, 4 connections"
      start_relay "$r" "$r-throughput-4-$pass"
      loadgen "$r" 120 throughput --conns 4 --bytes "$tp_bytes" --seconds 60
      stop_relay
      say "pass $pass/$repeat: $r: connection rate"
      fresh_server
      start_relay "$r" "$r-connrate-$pass"
      loadgen "$r" 120 connrate --count "$cr_count" --concurrency 16 --seconds 60
      stop_relay
      default_server
    done
  fi
  if want idle; then
    for r in "${relays[@]}"; do
      [[ $r == floor ]] && continue
      n=$idle_n
      if [[ $r == socat ]]; then n=$idle_socat; fi
      say "pass $pass/$repeat: $r: idle hold, $n sessions"
      start_relay "$r" "$r-idle-$pass"
      loadgen "$r" 200 idle --sessions "$n" --concurrency 200 --seconds 120
      stop_relay
    done
  fi
done
rep=1

# --- issue 5: live stats under load ----------------------------------------------
if want livestats; then
  say "isoproxy: live stats with $ls_sessions open and $ls_closed closed sessions"
  start_relay isoproxy isoproxy-livestats
  loadgen isoproxy 600 livestats --admin "$admin" --sessions "$ls_sessions" --closed "$ls_closed" \
    --requests "$ls_requests" --stream-seconds "$ls_stream" --rounds "$ls_rounds" --poll-hz 0 1 10 --trickle 1
  stop_relay
fi

# --- the profile ------------------------------------------------------------------
profile_one() {  # $1: name, $2: the relay's CPU list ("" for none), rest: loadgen arguments
  local name=$1 cpus=$2; shift 2
  start_relay isoproxy "isoproxy-profile-$name" "$cpus"
  # DWARF unwinding: the Release build has no frame pointers, and without
  # them the callers of a function (what it is there for) are lost.
  local rec=(perf record -g --call-graph dwarf,16384 -F 999 -p "$relay_pid" -o "$run_dir/perf-$name.data")
  echo "${rec[*]}" >> "$cmds"
  "${rec[@]}" > "$run_dir/perf-$name.log" 2>&1 &
  local perf_pid=$!
  started+=("$perf_pid")
  sleep 1
  loadgen isoproxy-profiled 180 "$@"
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  stop_relay
  # Time by object, the top symbols by self time, and isoproxy's own
  # functions by the time spent in them and their callees.
  perf_top "$run_dir/perf-$name.data" --no-children --sort dso --percent-limit 0.5 > "$run_dir/perf-$name-dso.txt"
  { perf_top "$run_dir/perf-$name.data" --no-children --sort dso,symbol --percent-limit 1.5 | head -25; } \
    > "$run_dir/perf-$name-self.txt" || true
  { perf_top "$run_dir/perf-$name.data" --children --sort symbol --percent-limit 2 \
    | grep -F '[.]' | grep -v '\[\.\] 0x' | head -25; } > "$run_dir/perf-$name-children.txt" || true
}
# perf report's lines, without the header, the empty IPC columns, trailing
# blanks and C++ template arguments (basic_json<…>::dump).
perf_top() {
  local data=$1; shift
  perf report -i "$data" "$@" --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' \
    | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' \
    | sed -E ':a; s/<[^<>]*>/‹›/; ta' | sed 's/‹›/<…>/g' || true
}
if want profile; then
  say "isoproxy (default config) under perf: throughput, then connection rate"
  profile_one throughput "" throughput --conns 1 --bytes "$prof_bytes" --seconds 60
  fresh_server
  PIN=$cr_gen_cpu profile_one connrate "$cr_relay_cpu" connrate --count "$prof_conns" --concurrency 16 --seconds 60
  default_server
fi
trap - EXIT
cleanup

# --- the table ----------------------------------------------------------------------
# field RELAY FILTER KEY: "median min max n" of KEY over the result lines of
# RELAY that match FILTER (k=v,k=v), or nothing.
field() {
  awk -v relay="$1" -v match_="$2" -v key="$3" '
    $1 == "RESULT" {
      for (i = 2; i <= NF; i++) {
        split($i, kv, "=")
        f[kv[1]] = substr($i, length(kv[1]) + 2)
      }
      if (f["relay"] == relay && (key in f)) {
        ok = 1
        m = split(match_, conds, ",")
        for (j = 1; j <= m; j++) {
          eq = index(conds[j], "=")
          if (f[substr(conds[j], 1, eq - 1)] != substr(conds[j], eq + 1)) ok = 0
        }
        if (ok) v[++n] = f[key] + 0
      }
      delete f
    }
    END {
      if (n == 0) exit
      for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
      med = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
      print med, v[1], v[n], n
    }' "$out"
}
med() { field "$@" | cut -d' ' -f1; }
spread=()   # cells whose passes disagree by more than 25 % of their median
cell() {  # relay filter key decimals row-label
  local f v h lo hi n
  f=$(field "$1" "$2" "$3")
  if [[ -z $f ]]; then echo "–"; return; fi
  read -r v lo hi n <<< "$f"
  if awk -v v="$v" -v lo="$lo" -v hi="$hi" 'BEGIN { exit !(v > 0 && (hi - lo) / v > 0.25) }'; then
    spread+=("$5, $(label "$1"): $(printf "%.${4}f–%.${4}f" "$lo" "$hi") over $n passes")
  fi
  h=$(med haproxy "$2" "$3")
  if [[ $1 == haproxy || -z $h ]]; then printf "%.${4}f" "$v"; return; fi
  awk -v v="$v" -v h="$h" -v d="$4" 'BEGIN { if (h > 0) printf "%.*f (%.2f×)", d, v, v / h; else printf "%.*f", d, v }'
}
rows=(
  "throughput, 1 conn|MB/s|workload=throughput,conns=1|mbps|0|higher is better"
  "throughput, 1 conn|relay CPU s/GB|workload=throughput,conns=1|cpu_s_per_gb|3|≤ 0.6× with no filter, ≤ 0.9× with filters"
  "throughput, 4 conns|MB/s|workload=throughput,conns=4|mbps|0|higher is better"
  "throughput, 4 conns|relay CPU s/GB|workload=throughput,conns=4|cpu_s_per_gb|3|as above"
  "ping-pong 64 B, 1 CPU|RTT p50 µs|workload=pingpong|p50_us|1|"
  "ping-pong 64 B, 1 CPU|RTT p99 µs|workload=pingpong|p99_us|1|≤ 1.0×"
  "ping-pong 64 B, 1 CPU|RTT p99.9 µs|workload=pingpong|p999_us|1|"
  "connect, CR, CC, close|sessions/s|workload=connrate|conns_per_s|0|higher is better"
  "connect, CR, CC, close|relay CPU µs/session|workload=connrate|cpu_us_per_conn|1|≤ 0.85×"
  "idle hold, $idle_n sessions|relay RSS KiB/session|workload=idle|rss_kib_per_session|2|≤ 0.3× (about 1 KiB)"
)
table=$run_dir/table.md
{
  printf '| workload | figure |'
  for r in "${relays[@]}"; do printf ' %s |' "$(label "$r")"; done
  printf ' issue 7 target (to HAProxy) |\n|---|---|'
  for r in "${relays[@]}"; do printf -- '---|'; done
  printf -- '---|\n'
  for row in "${rows[@]}"; do
    IFS='|' read -r wl fig filter key dec target <<< "$row"
    wname=${filter#workload=}
    want "${wname%%,*}" || continue
    printf '| %s | %s |' "$wl" "$fig"
    for r in "${relays[@]}"; do
      k=$key mark=""
      if [[ $r == socat && $key == rss_kib_per_session ]]; then k=pss_kib_per_session mark=" †"; fi  # see the notes
      cell "$r" "$filter" "$k" "$dec" "$wl, $fig" > "$run_dir/cell"
      printf ' %s%s |' "$(cat "$run_dir/cell")" "$mark"
    done
    printf ' %s |\n' "$target"
  done
} > "$table"

# Figures that qualify the table: repetitions, spread, other processes' CPU, failures.
notes=$run_dir/notes.md
{
  echo "Each cell is the median of $repeat pass(es); in each pass the relays took turns on each workload."
  if [[ ${#spread[@]} -gt 0 ]]; then
    echo "Cells whose passes differ by more than 25 % of the median (min–max):"
    echo
    printf -- '- %s\n' "${spread[@]}"
  fi
  echo
  if grep -q ' failed=' "$out"; then
    echo "Failed runs (no figure): $(grep -o 'relay=[^ ]* pass=[^ ]* failed=[^ ]*' "$out" | sed 's/relay=//; s/ pass=/ pass /; s/ failed=/: /' | paste -sd, -)."
    echo
  fi
  if has_relay socat && want idle; then
    echo "socat forks a process per connection: its CPU is that of the whole process tree (utime+stime+cutime+cstime of the listener and every child, from /proc). † Its idle figure is taken at $idle_socat sessions (not $idle_n: a process each) and is PSS per session, which splits shared pages between the processes; RSS summed over them would count shared pages once per process: $(med socat workload=idle rss_kib_per_session) KiB."
    echo
  fi
  if has_relay haproxy; then
    # The table divides medians; a relay and HAProxy in the same pass ran
    # seconds apart, so their ratio pass by pass is steadier on a noisy host.
    pp=$(awk -v relays="${relays[*]}" '
      $1 == "RESULT" && !/ failed=/ {
        delete f
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
        w = f["workload"]
        if (w == "throughput") { k = "throughput, " f["conns"] " conn(s), CPU/GB"; m = "cpu_s_per_gb" }
        else if (w == "pingpong") { k = "ping-pong p99"; m = "p99_us" }
        else if (w == "connrate") { k = "connection rate, CPU/session"; m = "cpu_us_per_conn" }
        else if (w == "idle") { k = "idle RSS/session"; m = "rss_kib_per_session" }
        else next
        if (!(m in f)) next
        v[f["relay"] SUBSEP k SUBSEP f["pass"]] = f[m]
        if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
        if (f["pass"] + 0 > np) np = f["pass"] + 0
      }
      END {
        nr = split(relays, rs, " ")
        for (ki = 1; ki <= nk; ki++) {
          k = order[ki]; line = ""
          for (ri = 1; ri <= nr; ri++) {
            r = rs[ri]; if (r == "haproxy" || r == "socat") continue
            n = 0
            for (p = 1; p <= np; p++)
              if ((r SUBSEP k SUBSEP p) in v && ("haproxy" SUBSEP k SUBSEP p) in v && v["haproxy", k, p] > 0)
                a[++n] = v[r, k, p] / v["haproxy", k, p]
            if (n == 0) continue
            for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            med = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            line = line sprintf("%s%s %.2f× (%.2f–%.2f)", line == "" ? "" : "; ", r, med, a[1], a[n])
          }
          if (line != "") printf "- %s: %s\n", k, line
        }
      }' "$out")
    if [[ -n $pp ]]; then
      echo "Ratios to HAProxy pass by pass (each relay against HAProxy in the same pass; median of the passes, lowest–highest):"
      echo
      echo "$pp"
      echo
    fi
  fi
  if has_relay floor && has_relay haproxy && want connrate; then
    fl=$(med floor workload=connrate cpu_us_per_conn); hp=$(med haproxy workload=connrate cpu_us_per_conn)
    is=$(med isoproxy workload=connrate cpu_us_per_conn)
    awk -v f="$fl" -v h="$hp" -v i="$is" 'BEGIN { if (f > 0 && h > 0) {
      printf "The floor (bench/floor.cpp: a bare epoll relay with no user-space work and the fewest system calls, for the connection rate only) needs %.1f µs per session, %.2f× HAProxy'"'"'s (medians): about what the kernel charges an epoll relay for the sockets, segments and wake-ups of the cycle.", f, f / h
      if (i > 0) printf " Above that floor, isoproxy spends %.1f µs per session (%.2f× the floor), HAProxy %.1f µs (%.2f×).", i - f, i / f, h - f, h / f
      printf "\n" } }'
    echo
  fi
  echo "CPU used by other processes during the measurements (the machine is shared; in CPUs, 2 = both cores), median and highest, with the load average (1 min) at the start of the runs:"
  echo
  awk '$1 == "RESULT" && /others_cpu_util=/ {
         for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
         r = f["relay"]; n[r]++; o[r, n[r]] = f["others_cpu_util"] + 0; l[r, n[r]] = f["load"] + 0
         w = f["workload"] (f["conns"] != "" ? "/" f["conns"] : "") (f["poll_hz"] != "" ? "/" f["poll_hz"] "Hz" : "") " pass " f["pass"]
         if (!(r in hi) || o[r, n[r]] > hi[r]) { hi[r] = o[r, n[r]]; hiw[r] = w }
         delete f }
       END { for (r in n) {
               k = n[r]
               for (i = 1; i <= k; i++) { a[i] = o[r, i]; b[i] = l[r, i] }
               for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
               for (i = 2; i <= k; i++) { x = b[i]; for (j = i - 1; j >= 1 && b[j] > x; j--) b[j + 1] = b[j]; b[j + 1] = x }
               printf "- %s: %.2f, highest %.2f (%s); load %.2f–%.2f over %d runs\n", r, a[int((k + 1) / 2)], hi[r], hiw[r], b[1], b[k], k } }' "$out" | sort
} > "$notes"

livestats=$run_dir/livestats.md
if want livestats && grep -q 'workload=livestats' "$out"; then
  {
    echo "| request, with $(med isoproxy workload=livestats,kind=latency sessions_open) open sessions and $ls_closed recently closed | body (bytes) | p50 ms | p99 ms | max ms |"
    echo "|---|---|---|---|---|"
    for path in "/sessions" "/sessions?closed=1" "/stats"; do
      f="workload=livestats,kind=latency,path=$path"
      echo "| \`GET $path\` | $(med isoproxy "$f" body_bytes) | $(med isoproxy "$f" p50_ms) | $(med isoproxy "$f" p99_ms) | $(med isoproxy "$f" max_ms) |"
    done
    echo
    echo "| one stream (8 KiB DT) while a poller GETs /sessions?closed=1 and /stats | MB/s | relay CPU s/GB | ratio of MB/s to no poller | polls | poll p50 ms | held sessions' echo RTT p50 / p99 / max ms |"
    echo "|---|---|---|---|---|---|---|"
    awk '$1 == "RESULT" && /workload=livestats/ && /kind=stream/ {
           for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
           hz = f["poll_hz"]; n[hz]++; mb[hz] += f["mbps"]; cpu[hz] += f["cpu_s_per_gb"]; polls[hz] += f["polls"]; pm[hz] += f["poll_p50_ms"]
           e50[hz] += f["echo_p50_ms"]; e99[hz] += f["echo_p99_ms"]; if (f["echo_max_ms"] + 0 > emax[hz]) emax[hz] = f["echo_max_ms"] + 0
           if (!(hz in seen)) { order[++k] = hz; seen[hz] = 1 }
           delete f }
         END { base = mb[0] / n[0]
               for (i = 1; i <= k; i++) { hz = order[i]
                 printf "| %s | %.0f | %.3f | %.3f | %d | %s | %.2f / %.2f / %.2f |\n", (hz == 0 ? "no poller" : hz " Hz"), mb[hz] / n[hz], cpu[hz] / n[hz],
                        (mb[hz] / n[hz]) / base, polls[hz], (hz == 0 ? "–" : sprintf("%.1f", pm[hz] / n[hz])),
                        e50[hz] / n[hz], e99[hz] / n[hz], emax[hz] } }' "$out"
    echo
    echo "Each row is the mean of $ls_rounds measurement(s) of ${ls_stream} s (polls: their total; echo max: the highest); the rates were measured in turn (0, 1, 10 Hz) in each round. The $ls_sessions held sessions each send a 64-octet DT once a second, echoed by the responder: their round trips show what a poll costs every other session while the event loop builds the answer."
  } > "$livestats"
fi

tlsmd=$run_dir/tls.md
if want tls && grep -q 'relay=isoproxy-tls ' "$out"; then
  {
    echo "| one connection streaming 8 KiB DT frames through two chained listeners | MB/s | relay CPU s/GB |"
    echo "|---|---|---|"
    for r in isoproxy-chain isoproxy-tls; do
      echo "| $(label "$r") | $(med "$r" workload=throughput,conns=1 mbps) | $(med "$r" workload=throughput,conns=1 cpu_s_per_gb) |"
    done
    echo
    c=$(med isoproxy-chain workload=throughput,conns=1 cpu_s_per_gb); t=$(med isoproxy-tls workload=throughput,conns=1 cpu_s_per_gb)
    awk -v c="$c" -v t="$t" 'BEGIN { if (c > 0) printf "TLS costs %.2f× the CPU per GB of the plaintext chain: %.3f s/GB for one encryption and one decryption of the stream.\n", t / c, t - c }'
    echo
    echo "Medians of $repeat pass(es). One isoproxy process runs both listeners, so its CPU is both ends of the TLS hop (TLS 1.3, P-256 certificate, the cipher OpenSSL negotiates by default)."
  } > "$tlsmd"
fi

workersmd=$run_dir/workers.md
if want workers && grep -q 'relay=isoproxy-2w ' "$out"; then
  {
    echo "| isoproxy, default config | throughput 4 conns, MB/s | relay CPU s/GB | connect, CR, CC, close: sessions/s | relay CPU µs/session |"
    echo "|---|---|---|---|---|"
    for r in isoproxy-1w isoproxy-2w; do
      echo "| $(label "$r") | $(med "$r" workload=throughput,conns=4 mbps) | $(med "$r" workload=throughput,conns=4 cpu_s_per_gb) | $(med "$r" workload=connrate conns_per_s) | $(med "$r" workload=connrate cpu_us_per_conn) |"
    done
    echo
    a=$(med isoproxy-1w workload=throughput,conns=4 mbps); b=$(med isoproxy-2w workload=throughput,conns=4 mbps)
    c=$(med isoproxy-1w workload=connrate conns_per_s); d=$(med isoproxy-2w workload=connrate conns_per_s)
    awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN { if (a > 0 && c > 0) printf "Two workers against one: %.2f× the throughput, %.2f× the connection rate.\n", b / a, d / c }'
    echo
    echo "Medians of $repeat pass(es). The generator (one thread) shares the machine's $(nproc) CPUs with the relay, so a second worker can only use what the generator leaves; the relay's CPU per GB and per session show what the second loop costs."
  } > "$workersmd"
fi

profile=$run_dir/profile.md
if want profile; then
  {
    for name in throughput connrate; do
      [[ -s $run_dir/perf-$name-self.txt ]] || continue
      echo "### $name: isoproxy (default config), perf record -g (DWARF) at 999 Hz"
      echo
      echo "Time by object (self):"
      echo
      echo '```text'
      cat "$run_dir/perf-$name-dso.txt"
      echo '```'
      echo
      echo "Symbols by self time (≥ 1.5 %):"
      echo
      echo '```text'
      cat "$run_dir/perf-$name-self.txt"
      echo '```'
      echo
      echo "User-space functions by time in them and their callees (children, self; ≥ 2 %; libuv has no symbols):"
      echo
      echo '```text'
      cat "$run_dir/perf-$name-children.txt"
      echo '```'
      echo
    done
  } > "$profile"
fi

echo
cat "$table"
echo
cat "$notes"
[[ -s ${livestats:-/nonexistent} ]] && { echo; cat "$livestats"; }
[[ -s ${workersmd:-/nonexistent} ]] && { echo; cat "$workersmd"; }

[[ $results == - ]] && exit 0
# The results file: generated, except the hand-written notes between the
# markers, which a new run keeps.
marker_begin='<!-- notes: kept by bench/run.sh -->'
marker_end='<!-- /notes -->'
kept=""
if [[ -f $results ]] && grep -qF "$marker_begin" "$results"; then
  kept=$(sed -n "\|$marker_begin|,\|$marker_end|p" "$results")
fi
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mode="full"; [[ $quick -eq 1 ]] && mode="quick (--quick: smaller counts, rougher figures)"
{
  echo "# isoproxy benchmark results"
  echo
  echo "Generated by \`bench/run.sh\` (see bench/README.md for what each figure means)."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $cpu_model, $(nproc) CPUs (nproc), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- Load average (1 min) at start: $load_start (waited for < $max_load, at most ${wait_max}s); each run's is in the notes below."
  echo "- isoproxy $revision ($($iso --version 2>/dev/null | head -n1 || true)), $(haproxy -v | head -n1 | cut -d' ' -f1-3), $(socat -V | grep -m1 'socat version' | cut -d' ' -f1-3); $(c++ --version | head -n1)"
  echo "- Mode: $mode; workloads: ${workloads[*]}; relays: ${relays[*]}"
  echo
  echo "## Issue 7: isoproxy, HAProxy and socat on loopback"
  echo
  echo "Cells: the figure, and in brackets its ratio to HAProxy's in the same run."
  echo
  cat "$table"
  echo
  cat "$notes"
  if [[ -s ${livestats:-/nonexistent} ]]; then
    echo
    echo "## Issue 5: the admin endpoint with $ls_sessions sessions"
    echo
    cat "$livestats"
  fi
  if [[ -s ${tlsmd:-/nonexistent} ]]; then
    echo
    echo "## Issue 6: TLS next to plaintext"
    echo
    cat "$tlsmd"
  fi
  if [[ -s ${workersmd:-/nonexistent} ]]; then
    echo
    echo "## Issue 7: workers = 1 against workers = 2"
    echo
    cat "$workersmd"
  fi
  if [[ -s ${profile:-/nonexistent} ]]; then
    echo
    echo "## Profile"
    echo
    cat "$profile"
  fi
  echo
  echo "## Notes"
  echo
  if [[ -n $kept ]]; then
    echo "$kept"
  else
    echo "$marker_begin"
    echo "(Hand-written reading of the figures and the profile goes here; bench/run.sh keeps it.)"
    echo "$marker_end"
  fi
  echo
  echo "<details><summary>Every result line of this run</summary>"
  echo
  echo '```text'
  sed 's/^RESULT //' "$out"
  echo '```'
  echo
  echo "</details>"
  echo
  echo "## Exact commands"
  echo
  echo "\`bench/run.sh ${workloads[*]}$([[ $quick -eq 1 ]] && echo ' --quick') --repeat $repeat\` ran these, in this order, the comparison's $repeat times (each relay started afresh for each run; RELAY_PID is its pid; the configurations follow):"
  echo
  echo '```sh'
  sed -E "s|$run_dir|RUN|g; s|$root/||g; s/--pid [0-9]+/--pid RELAY_PID/; s/-p [0-9]+ /-p RELAY_PID /" "$cmds" | awk '!seen[$0]++'
  echo '```'
  echo
  echo "RUN/isoproxy.toml is conf/isoproxy.toml with \`listen = \"$relay\"\`, \`upstream = \"$server\"\` and \`[admin] listen = \"$admin\"\`;"
  echo "RUN/isoproxy-framed.toml is RUN/isoproxy.toml with the repair filter on every TPDU type (\`tpdu = [\"any\"]\`), a filter that needs the data phase;"
  echo "RUN/isoproxy-bare.toml the same with \`filters = []\` and \`[admin] listen = \"off\"\`, \`closed_sessions = 0\`. RUN/haproxy.cfg:"
  echo
  echo '```'
  cat "$run_dir/haproxy.cfg"
  echo '```'
} > "$results"
say "results written to $results (raw figures and logs in $run_dir)"
