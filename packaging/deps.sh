#!/usr/bin/env bash
# Installs, with apt-get, whatever isoproxy needs to build and test that is not
# already installed. Idempotent: a second run installs nothing and is quiet.
# Usage: packaging/deps.sh [--test]   (--test adds the tools the test suite uses)
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config
  libuv1-dev libssl-dev libtomlplusplus-dev
  libcli11-dev nlohmann-json3-dev libpcap-dev libspdlog-dev libhttp-parser-dev
  libsystemd-dev libcap-dev
  catch2
)
test_pkgs=(
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
  tshark iproute2 nftables procps
  chromium openssl prometheus
  lintian logrotate man-db groff-base
)

want=("${build_pkgs[@]}")
[[ "${1:-}" == "--test" ]] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections 2>/dev/null || true
# An apt list older than a day (or none at all) is refreshed once.
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]]; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
