#!/bin/sh
# tproxy-setup.sh: three network namespaces around isoproxy in transparent
# mode (TPROXY), for tests/integration/transparent_test.cpp and as a readable
# recipe for operators.
#
#   tproxy-setup.sh setup    PREFIX [TPROXY_ADDR:PORT]
#   tproxy-setup.sh teardown PREFIX
#
#   PREFIX-c  client   10.77.1.2/24               default via 10.77.1.1
#   PREFIX-r  router   10.77.1.1/24, 10.77.2.1/24 ip_forward=1, runs isoproxy
#   PREFIX-s  server   10.77.2.2/24               default via 10.77.2.1
#
# Only namespaces named PREFIX-* are created or touched: the host's own
# interfaces, routes and nftables rules are never changed. The veth pairs are
# created directly inside the namespaces (never in the host's), so their
# short names cannot clash between parallel runs. `setup` removes what it
# made if a step fails; `teardown` deletes the namespaces (and with them the
# veths, routes, rules and nft table in them) and ignores ones already gone.
#
# TPROXY_ADDR:PORT (default 127.0.0.1:10102) is where new TCP connections to
# port 102 are diverted; isoproxy's transparent listener listens there (or on
# 0.0.0.0 with that port). Every command is printed before it runs (stderr).
#
# The recipe on the router (what a real box needs, namespaces aside):
#
#   nft -f - <<'NFT'
#   table ip isoproxy_tproxy {
#     chain prerouting {
#       type filter hook prerouting priority mangle; policy accept;
#       # packets of connections that already have a transparent socket
#       # (accepted client legs, upstream legs with source = "client"), and
#       # ICMP errors about them, which nft's socket match looks into (with
#       # "meta l4proto tcp" they are forwarded to the client instead):
#       socket transparent 1 meta mark set 1 accept
#       # new connections to port 102, whatever their destination:
#       meta l4proto tcp tcp dport 102 tproxy ip to 127.0.0.1:10102 meta mark set 1 accept
#     }
#   }
#   NFT
#   ip rule add fwmark 1 lookup 100
#   ip route add local 0.0.0.0/0 dev lo table 100
#
# Tested variants: listener 127.0.0.1:10102 or 0.0.0.0:10102 with
# "tproxy ip to 127.0.0.1:10102"; listener 0.0.0.0:10102 or the ingress
# interface's address with "tproxy ip to :10102" (no address: the kernel
# looks for a listener on the ingress interface's primary address). A
# listener on 127.0.0.1 with "to :10102" is never found.
# Fails open: when no listener matches (isoproxy down, wrong address), the
# tproxy rule does not match and port 102 is forwarded untouched.
set -eu
# ip and nft live in sbin, which a non-login root shell may not have on PATH.
PATH=$PATH:/usr/sbin:/sbin:/usr/bin:/bin

usage() {
  echo "usage: $0 setup PREFIX [TPROXY_ADDR:PORT] | teardown PREFIX" >&2
  exit 64
}

[ $# -ge 2 ] || usage
action=$1
prefix=$2
tproxy_to=${3:-127.0.0.1:10102}
case $prefix in
  ''|*[!A-Za-z0-9_.-]*) echo "$0: bad PREFIX '$prefix' (letters, digits, _ . - only)" >&2; exit 64 ;;
esac
C=$prefix-c
R=$prefix-r
S=$prefix-s

run() {
  echo "+ $*" >&2
  "$@"
}

# Deletes PREFIX-c, -r, -s (or, given names, just those); missing ones are skipped.
teardown() {
  rc=0
  [ $# -gt 0 ] || set -- "$C" "$R" "$S"
  for ns in "$@"; do
    if [ -e "/run/netns/$ns" ] || ip netns list | awk '{print $1}' | grep -qxF "$ns"; then
      run ip netns del "$ns" || rc=1
    fi
  done
  return $rc
}

created=""

setup() {
  for ns in "$C" "$R" "$S"; do
    run ip netns add "$ns"
    created="$created $ns"
    run ip -n "$ns" link set lo up
  done

  # client eth0 <-> router eth0, server eth0 <-> router eth1; each pair is
  # made inside the namespaces, never in the host's.
  run ip -n "$C" link add eth0 type veth peer name eth0 netns "$R"
  run ip -n "$S" link add eth0 type veth peer name eth1 netns "$R"

  run ip -n "$C" addr add 10.77.1.2/24 dev eth0
  run ip -n "$C" link set eth0 up
  run ip -n "$C" route add default via 10.77.1.1

  run ip -n "$S" addr add 10.77.2.2/24 dev eth0
  run ip -n "$S" link set eth0 up
  run ip -n "$S" route add default via 10.77.2.1

  run ip -n "$R" addr add 10.77.1.1/24 dev eth0
  run ip -n "$R" addr add 10.77.2.1/24 dev eth1
  run ip -n "$R" link set eth0 up
  run ip -n "$R" link set eth1 up
  # /proc/sys/net is per namespace: this is the router's, not the host's.
  run ip netns exec "$R" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'

  # TPROXY: divert and mark in prerouting, route marked packets to the local stack.
  echo "+ ip netns exec $R nft -f - <<NFT" >&2
  ip netns exec "$R" nft -f - <<NFT
table ip isoproxy_tproxy {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    socket transparent 1 meta mark set 1 accept
    meta l4proto tcp tcp dport 102 tproxy ip to $tproxy_to meta mark set 1 accept
  }
}
NFT
  run ip -n "$R" rule add fwmark 1 lookup 100
  run ip -n "$R" route add local 0.0.0.0/0 dev lo table 100
}

case $action in
  setup)
    for ns in "$C" "$R" "$S"; do
      if [ -e "/run/netns/$ns" ]; then
        echo "$0: namespace $ns already exists; pick another PREFIX or run: $0 teardown $prefix" >&2
        exit 1
      fi
    done
    # On any failure (set -e) or signal, remove what this run created, and only that.
    finished=0
    trap 'if [ $finished = 0 ]; then echo "$0: setup failed; removing:$created" >&2; [ -z "$created" ] || teardown $created || true; fi' EXIT
    trap 'exit 1' HUP INT TERM
    setup
    finished=1
    ;;
  teardown) teardown ;;
  *) usage ;;
esac
