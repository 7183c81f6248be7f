#!/usr/bin/env bash
# Writes a Markdown summary of the denials in NONO_EVENTS to
# GITHUB_STEP_SUMMARY (or stdout) and `denied=N` to GITHUB_OUTPUT.
set -euo pipefail
events="${NONO_EVENTS:-nono-events.jsonl}"
out="${GITHUB_STEP_SUMMARY:-/dev/stdout}"
python3 - "$events" >>"$out" <<'PY'
import json, sys, collections, os
path = sys.argv[1]
rows = collections.Counter()
total = 0
try:
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
except FileNotFoundError:
    lines = []
for line in lines:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("verdict") != "deny":
        continue
    total += 1
    dest = e.get("host") or e.get("addr") or ""
    port = e.get("port")
    if dest and port:
        dest = f"[{dest}]:{port}" if ":" in dest else f"{dest}:{port}"
    rows[(e.get("source", "?"), e.get("hook", "?"), e.get("reason", "?"), dest)] += 1
print("### nono-agent: network denials\n")
if not total:
    print("No connection was refused.\n")
else:
    print(f"{total} refused.\n")
    print("| count | enforcer | hook | reason | destination |")
    print("|---:|---|---|---|---|")
    for (src, hook, reason, dest), n in rows.most_common(50):
        print(f"| {n} | {src} | {hook} | {reason} | `{dest}` |")
    if len(rows) > 50:
        print(f"\n… and {len(rows) - 50} more kinds (see the events artifact).")
gh = os.environ.get("GITHUB_OUTPUT")
if gh:
    with open(gh, "a") as f:
        f.write(f"denied={total}\n")
PY
