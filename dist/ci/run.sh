#!/usr/bin/env bash
# Runs NONO_RUN (bash) under nono-agent with NONO_PROFILE and the extra
# NONO_ALLOW_DOMAINS (newline- or comma-separated), writing events to
# NONO_EVENTS; NONO_AUDIT=true runs it in audit mode. The command's exit
# status is the step's.
set -euo pipefail
bin="${NONO_AGENT_BIN:-$(command -v nono-agent)}"
args=(exec --events "${NONO_EVENTS:-nono-events.jsonl}")
if [ -n "${NONO_PROFILE:-}" ]; then
    args+=(--profile "$NONO_PROFILE")
fi
while IFS= read -r d; do
    d="${d#"${d%%[![:space:]]*}"}"
    d="${d%"${d##*[![:space:]]}"}"
    [ -n "$d" ] && args+=(--allow-domain "$d")
done < <(printf '%s\n' "${NONO_ALLOW_DOMAINS:-}" | tr ',' '\n')
case "${NONO_AUDIT:-false}" in
    true) args+=(--audit) ;;
    false | "") ;;
    *) echo "nono-agent action: audit must be true or false, not '$NONO_AUDIT'" >&2; exit 125 ;;
esac
if [ -n "${NONO_AGENT_DAEMON_SOCKET:-}" ]; then
    args+=(--daemon-socket "$NONO_AGENT_DAEMON_SOCKET")
fi
exec "$bin" "${args[@]}" -- bash -c "$NONO_RUN"
