#!/usr/bin/env bash
# Debian packages the tests use, installed when missing: iproute2 (`ip netns`, `tc`) for the
# network-namespace fault tests, and iptables for their delay/loss on a wire where the kernel has no
# netem (netfilter's `statistic` match and NFQUEUE). Needs root and apt-get; without them it says so
# and the tests that need the packages skip with the reason.
set -uo pipefail
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables-legacy >/dev/null || command -v iptables >/dev/null || missing+=(iptables)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-debs: ${missing[*]} missing and not root with apt-get: the tests that need them will skip"
    exit 0
fi
echo "install-debs: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || echo "install-debs: could not install ${missing[*]}: the tests that need them will skip"
fi
exit 0
