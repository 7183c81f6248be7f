#!/bin/sh
# Runs every fuzz target for N seconds (default 60), one after another.
# Exit status is non-zero if a target failed or found a crash (artifacts/).
set -u
secs=${1:-60}
cd "$(dirname "$0")"
status=0
for t in domain_rule forward_request target_cidr daemon_request; do
    mkdir -p "corpus/$t"
    echo "== $t ($secs s)"
    log="corpus/$t.log"
    if ! cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" >"$log" 2>&1; then
        status=1
        echo "!! $t failed; see $log"
    fi
    grep -E "Done [0-9]+ runs|DONE" "$log" | tail -n 2
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
        echo "!! $t: crashing inputs in artifacts/$t"
        status=1
    fi
done
exit $status
