#!/usr/bin/env bash
# Installs the system packages the network tests use: coturn (turnserver, our STUN/TURN server),
# redis-server (the shared state of relay replicas in the cluster tests), iproute2 (ip netns,
# tc netem), iptables (NAT routers) and tcpdump (captures of the relay's traffic on loopback).
# Only what is missing is installed.
# Without root (or without apt-get) it prints what is missing and goes on: those tests skip.
set -u
need=()
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: missing system packages: ${need[*]} (network tests will skip); install them as root" >&2
    exit 0
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "warning: apt-get could not install ${need[*]}; network tests will skip" >&2
# Debian starts coturn and redis-server as services on install (redis on port 6379); the tests
# run their own instances on free ports, so the distro services we just installed only take
# memory and ports. Services the machine had before are left alone.
if command -v systemctl >/dev/null 2>&1; then
    for service in "${need[@]}"; do
        case "$service" in
            coturn | redis-server) systemctl disable --now "$service" >/dev/null 2>&1 || true ;;
        esac
    done
fi
exit 0
