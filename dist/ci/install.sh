#!/usr/bin/env bash
# Installs nono-agent (from NONO_PACKAGE, a .deb path or URL, if given) and
# makes sure its daemon answers, so the job's (unprivileged) command gets
# the BPF enforcer. Runs as root. Starts the daemon itself when systemd is
# not PID 1 (containers, most CI runners). NONO_SELFTEST=true then runs
# `nono-agent selftest` and fails the step if this runner does not enforce.
set -euo pipefail
log() { printf 'nono-agent action: %s\n' "$*" >&2; }

# The daemon answers: check the host if asked, and finish.
ready() {
    log "the daemon answers on $socket"
    case "${NONO_SELFTEST:-false}" in
        true)
            log "checking that this runner enforces (nono-agent selftest)"
            if ! "$bin" selftest --daemon-socket "$socket"; then
                log "selftest failed: this runner does not confine the command; refusing to go on"
                exit 1
            fi
            ;;
        false | "") ;;
        *) log "selftest must be true or false, not '$NONO_SELFTEST'"; exit 1 ;;
    esac
    exit 0
}

if [ -n "${NONO_PACKAGE:-}" ]; then
    pkg="$NONO_PACKAGE"
    if [[ "$pkg" == http://* || "$pkg" == https://* ]]; then
        tmp="$(mktemp -d)"
        curl -fsSL -o "$tmp/nono-agent.deb" "$pkg"
        pkg="$tmp/nono-agent.deb"
    fi
    log "installing $pkg"
    dpkg -i "$pkg" >/dev/null
fi
bin="${NONO_AGENT_BIN:-$(command -v nono-agent || true)}"
if [ -z "$bin" ]; then
    log "nono-agent is not installed (give the action a package)"
    exit 1
fi
socket="${NONO_AGENT_DAEMON_SOCKET:-/run/nono-agent/daemon.sock}"
if "$bin" doctor --daemon-socket "$socket" --json | grep -q '"answers": true'; then
    ready
fi
if [ -d /run/systemd/system ] && systemctl list-unit-files nono-agent.socket >/dev/null 2>&1; then
    systemctl start nono-agent.socket
else
    log "starting the daemon (no systemd)"
    mkdir -p "$(dirname "$socket")"
    nohup "$bin" daemon --socket "$socket" ${NONO_DAEMON_ARGS:-} \
        >"${NONO_DAEMON_LOG:-/var/log/nono-agent-daemon.log}" 2>&1 &
fi
for _ in $(seq 100); do
    if "$bin" doctor --daemon-socket "$socket" --json | grep -q '"answers": true'; then
        ready
    fi
    sleep 0.1
done
log "the daemon did not start (see ${NONO_DAEMON_LOG:-/var/log/nono-agent-daemon.log})"
exit 1
