#!/usr/bin/env bash
# Syslog collectors compared: `iocp serve syslog` against rsyslog (Debian's package, installed
# with apt-get when missing and running as root), same load, same run, interleaved, >= 3
# repetitions, medians; rsyslog runs twice (the second instance is the noise floor). All are
# driven by `iocp bench syslog` (std threads with blocking
# sockets, not the iocp library), which counts every numbered message in the output files:
# TCP flat out must lose nothing; UDP loss is reported for both at the same offered loads.
# Server CPU per message from /proc/PID/stat. See bench/compare-syslog.py for the cases and
# the rsyslog configuration.
#
#   bench/compare-syslog.sh [--reps N] [--tcp-count N] [--connections C] [--udp-count N]
#                           [--udp-senders K] [--udp-rates R1,R2,...|max] [--server-threads N]
#                           [--label TEXT]
#
# Defaults: 3 repetitions of 1,000,000 TCP messages over 4 connections, and 300,000 UDP
# messages from 2 senders at 50,000 and 150,000 msgs/s; about 3-5 minutes on 2 cores.
# Every server is killed on exit; every run has a count, a duration and a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '== %s\n' "$*" >&2; }

step "building iocp (release)"
cargo build --release -p iocp-cli --quiet

if ! command -v rsyslogd >/dev/null && [ ! -x /usr/sbin/rsyslogd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing rsyslog (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends rsyslog; } >/dev/null 2>&1 || true
    fi
fi
if ! command -v rsyslogd >/dev/null && [ ! -x /usr/sbin/rsyslogd ]; then
    echo "compare-syslog: rsyslogd is not installed (apt-get install rsyslog)" >&2
    exit 2
fi
export PATH="$PATH:/usr/sbin"

# compare-syslog.py kills its servers (each in its own process group) on exit and on
# SIGINT/SIGTERM; should it die without doing so, this trap kills the groups it left.
pidfile=$(mktemp)
cleanup() {
    if [ -n "${py:-}" ]; then kill -TERM "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
    while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$pidfile"
    rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
COMPARE_PIDFILE=$pidfile python3 "$root/bench/compare-syslog.py" "$@" &
py=$!
status=0
wait "$py" || status=$?
py=
exit "$status"
