#!/usr/bin/env bash
# Writes a Markdown summary of the denials in NONO_EVENTS (and, in audit
# mode, of what would have been denied) to GITHUB_STEP_SUMMARY (or stdout),
# and `denied=N` and `would-deny=N` to GITHUB_OUTPUT.
set -euo pipefail
events="${NONO_EVENTS:-nono-events.jsonl}"
out="${GITHUB_STEP_SUMMARY:-/dev/stdout}"
python3 - "$events" >>"$out" <<'PY'
import json, sys, collections, os
path = sys.argv[1]
rows = {"deny": collections.Counter(), "would-deny": collections.Counter()}
try:
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
except FileNotFoundError:
    lines = []
for line in lines:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    verdict = e.get("verdict")
    if verdict not in rows:
        continue
    dest = e.get("host") or e.get("addr") or e.get("path") or ""
    port = e.get("port")
    if dest and port:
        dest = f"[{dest}]:{port}" if ":" in dest else f"{dest}:{port}"
    # Everything here came from the sandboxed command: keep it inside the
    # code span and the table (no backticks, pipes or line breaks).
    dest = "".join(c if c.isprintable() and c not in "`|" else "?" for c in str(dest))
    reason = "".join(c if c.isprintable() and c != "|" else "?" for c in str(e.get("reason", "?")))
    rows[verdict][(e.get("source", "?"), e.get("hook", "?"), reason, dest)] += 1
denied = sum(rows["deny"].values())
would = sum(rows["would-deny"].values())

def table(counter):
    print("| count | enforcer | hook | reason | destination |")
    print("|---:|---|---|---|---|")
    for (src, hook, reason, dest), n in counter.most_common(50):
        print(f"| {n} | {src} | {hook} | {reason} | `{dest}` |")
    if len(counter) > 50:
        print(f"\n… and {len(counter) - 50} more kinds (see the events artifact).")

print("### nono-agent: network denials\n")
if not denied:
    print("No connection was refused.\n")
else:
    print(f"{denied} refused.\n")
    table(rows["deny"])
if would:
    print("\n### nono-agent: would have been denied (audit mode)\n")
    print(f"{would} let through that the profile would refuse; allow them (or run "
          "`nono-agent learn`) before enforcing.\n")
    table(rows["would-deny"])
gh = os.environ.get("GITHUB_OUTPUT")
if gh:
    with open(gh, "a") as f:
        f.write(f"denied={denied}\nwould-deny={would}\n")
PY
