# shellcheck shell=bash
# Helpers shared by tools/setup_slurm.sh (one node) and tools/setup_slurm_cluster.sh (nodes in network
# namespaces). Sourced, not run. The caller sets STATE (its state directory), DEADLINE_S and SLURM_LIB_NAME
# (the prefix of its messages).

say() { printf '[%s] %s\n' "$SLURM_LIB_NAME" "$*"; }
die() { printf '[%s] error: %s\n' "$SLURM_LIB_NAME" "$*" >&2; exit "${2:-1}"; }

# alive PID: the process exists and is not a zombie (daemons linger as zombies for a moment)
alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/status" ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# pid_of NAME: the PID recorded in $STATE/NAME.pid (NAME may be a relative path)
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

wait_for_file() {
    local path="$1" what="$2" t=0
    until [[ -s "$path" ]]; do
        ((t++ < DEADLINE_S * 10)) || die "$what did not appear within ${DEADLINE_S}s ($path); logs in $STATE/log"
        sleep 0.1
    done
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


# slurm_conf_plugins: the slurm.conf lines both clusters share. No cgroups (a container has no delegated
# cgroup tree), no accounting database, whole cores as the consumable resource, and a node that comes
# back is returned to service by itself.
slurm_conf_plugins() {
    cat <<'CONF'
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
CONF
}
