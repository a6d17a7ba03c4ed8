#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, without systemd or cgroups (docs/platform.md [slurm-one-node]).
#
#   bash tools/setup_slurm.sh start    # install slurm-wlm + munge if missing, configure, start, wait for idle
#   bash tools/setup_slurm.sh status   # the daemons' PIDs and the node state
#   bash tools/setup_slurm.sh stop     # stop the daemons started by `start`, by PID
#
# Everything `start` creates lives in the state directory ($DCPO_SLURM_STATE, default /tmp/dcpo-slurm):
# pid files, spool, logs. The only files written outside it are /etc/munge/munge.key (if absent) and
# /etc/slurm/slurm.conf, which carries a marker line; a slurm.conf without the marker (a real cluster's)
# is never overwritten. Needs root.
#
# Exit codes: 0 ok; 1 failure (the reason is printed); 3 Slurm cannot be installed here (not root, or no
# apt-get), which the CI test turns into a skip.
set -euo pipefail

STATE="${DCPO_SLURM_STATE:-/tmp/dcpo-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by dcpo-mcore tools/setup_slurm.sh"
HOST="$(hostname -s)"
DEADLINE_S="${DCPO_SLURM_DEADLINE_S:-60}"
SLURM_LIB_NAME=setup_slurm
# shellcheck source=tools/slurm_lib.sh
source "$(dirname "$0")/slurm_lib.sh"

write_conf() {
    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's config"
    fi
    local cpus mem_mib
    cpus="$(nproc)"
    mem_mib="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/slurmd" "$STATE/log"
    chmod 755 "$STATE"
    chown -R slurm:slurm "$STATE/ctld" "$STATE/log"
    runuser -u slurm -- test -w "$STATE/ctld" \
        || die "slurmctld runs as user slurm and cannot write $STATE/ctld (is a parent directory private?); set DCPO_SLURM_STATE to a directory such as /tmp/dcpo-slurm"
    cat >"$CONF.tmp" <<EOF
$MARKER (state in $STATE); stop with: bash tools/setup_slurm.sh stop
ClusterName=dcpo
SlurmctldHost=$HOST
$(slurm_conf_plugins)
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldParameters=enable_configless
JobRequeue=1
KillWait=10
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    local pid
    pid="$(pid_of munged)"
    if alive "$pid"; then say "munged already running (pid $pid)"; return 0; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    wait_for_file /run/munge/munged.pid "munged pid file"
    cp /run/munge/munged.pid "$STATE/munged.pid"
    say "munged started (pid $(pid_of munged))"
}

start_daemon() {  # name, command...
    local name="$1" pid
    shift
    pid="$(pid_of "$name")"
    if alive "$pid"; then say "$name already running (pid $pid)"; return 0; fi
    rm -f "$STATE/$name.pid"
    "$@" || die "$name failed to start; see $STATE/log/$name.log"
    wait_for_file "$STATE/$name.pid" "$name pid file"
    say "$name started (pid $(pid_of "$name"))"
}

wait_idle() {
    local t=0 state="" name
    while ((t++ < DEADLINE_S * 2)); do
        for name in slurmctld slurmd; do
            if ! alive "$(pid_of "$name")"; then
                tail -n 5 "$STATE/log/$name.log" >&2 || true
                die "$name exited during startup; see $STATE/log/$name.log"
            fi
        done
        state="$(timeout 10 sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle | mixed | allocated) say "node $HOST is $state"; return 0 ;;
            down* | drain* | *fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $HOST did not become idle within ${DEADLINE_S}s (last state: ${state:-none}); see $STATE/log"
}

cmd_start() {
    mkdir -p "$STATE"
    # a failed start leaves nothing running: stop what was started, by PID
    trap 'rc=$?; if ((rc != 0 && rc != 3)); then cmd_stop >&2 || true; fi' EXIT
    install_packages
    write_conf
    start_munge
    start_daemon slurmctld /usr/sbin/slurmctld -c -i
    start_daemon slurmd /usr/sbin/slurmd
    wait_idle
    trap - EXIT
    say "ready: sbatch/srun/squeue/scontrol work; stop with: bash tools/setup_slurm.sh stop"
}

cmd_stop() {
    [[ -d "$STATE" ]] || { say "nothing to stop ($STATE does not exist)"; return 0; }
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
}

cmd_status() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        pid="$(pid_of "$name")"
        if alive "$pid"; then say "$name running (pid $pid)"; else say "$name not running"; rc=1; fi
    done
    if ((rc == 0)); then sinfo -N -h -o '%N %T %c CPUs %m MiB' || true; fi
    return "$rc"
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: bash tools/setup_slurm.sh [start|stop|status]" 2 ;;
esac
