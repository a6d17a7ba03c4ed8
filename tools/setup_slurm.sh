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

say() { printf '[setup_slurm] %s\n' "$*"; }
die() { printf '[setup_slurm] error: %s\n' "$*" >&2; exit "${2:-1}"; }

# alive PID: the process exists and is not a zombie (daemons linger as zombies for a moment)
alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

pid_of() {
    if [[ -s "$STATE/$1.pid" ]]; then tr -dc '0-9' <"$STATE/$1.pid"; fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "slurm-wlm/munge are not installed and this is not root; install them or run as root" 3
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get" 3
    say "installing slurm-wlm and munge with apt-get (about 20 s)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq >"$STATE/apt.log" 2>&1 \
        || ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$STATE/apt.log" 2>&1; then
        tail -n 20 "$STATE/apt.log" >&2
        die "apt-get install slurm-wlm munge failed (log: $STATE/apt.log)" 3
    fi
    # The packages try to start the daemons through init scripts; without systemd nothing runs,
    # but make sure nothing half-started is left holding the ports.
}

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
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
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

wait_for_file() {
    local path="$1" what="$2" t=0
    until [[ -s "$path" ]]; do
        ((t++ < DEADLINE_S * 10)) || die "$what did not appear within ${DEADLINE_S}s ($path); logs in $STATE/log"
        sleep 0.1
    done
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

stop_pid() {
    local name="$1" pid t=0
    pid="$(pid_of "$name")"
    if ! alive "$pid"; then rm -f "$STATE/$name.pid"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && ((t++ < 100)); do sleep 0.1; done
    if alive "$pid"; then
        say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        t=0
        while alive "$pid" && ((t++ < 50)); do sleep 0.1; done
    fi
    alive "$pid" && die "$name (pid $pid) is still running"
    rm -f "$STATE/$name.pid"
    say "$name stopped (pid $pid)"
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
