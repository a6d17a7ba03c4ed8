#!/usr/bin/env bash
# A real multi-node Slurm cluster on ONE machine (docs/slurm.md [netns-cluster]). Each node is a slurmd in
# its own network, UTS and mount namespace: its own hostname (dcpo-n1, dcpo-n2, ...), its own address on a
# bridge this script creates, its own loopback, spool, pid file and log. munged and slurmctld run once, in
# the host namespace, on the bridge's address. Nothing leaves the machine: the bridge has no uplink.
#
#   sudo bash tools/setup_slurm_cluster.sh start [--nodes 3]   # configure, start, wait until every node is idle
#   export SLURM_CONF=/tmp/dcpo-slurm-cluster/slurm.conf        # what sbatch/srun/squeue need (start prints it)
#   bash tools/setup_slurm_cluster.sh status
#   bash tools/setup_slurm_cluster.sh stop                      # every daemon by PID, then the namespaces
#
# It never touches /etc: the config, munge key and socket, pid files, spools and logs all live in the
# state directory ($DCPO_SLURM_STATE, default /tmp/dcpo-slurm-cluster), and the controller listens on port
# 6917, so it can run beside tools/setup_slurm.sh's one-node cluster (6817) or a real one. Inside a node,
# /etc/hosts is the state directory's hosts file (every node's name and the controller's), bind-mounted in
# that node's mount namespace only. Needs root (namespaces, veth, bridge).
#
# Exit codes: 0 ok; 1 failure (the reason is printed); 3 Slurm cannot run here (not root, no apt-get, or no
# network namespaces), which the CI test turns into a skip.
set -euo pipefail

STATE="${DCPO_SLURM_STATE:-/tmp/dcpo-slurm-cluster}"
DEADLINE_S="${DCPO_SLURM_DEADLINE_S:-60}"
SUBNET="${DCPO_SLURM_SUBNET:-10.213.0}"  # a /24 used only on the bridge
BRIDGE=dcpobr0
CTLD_PORT=6917
HOST="$(hostname -s)"
SLURM_LIB_NAME=setup_slurm_cluster
# shellcheck source=tools/slurm_lib.sh
source "$(dirname "$0")/slurm_lib.sh"

node_name() { printf 'dcpo-n%d' "$1"; }
node_addr() { printf '%s.%d' "$SUBNET" "$((10 + $1))"; }
node_count() { if [[ -s "$STATE/nodes.count" ]]; then cat "$STATE/nodes.count"; else echo 0; fi; }

preflight() {
    [[ "$(id -u)" == 0 ]] || die "a namespace cluster needs root (ip netns, veth, bridge)" 3
    command -v ip >/dev/null || die "iproute2 (ip) is not installed" 3
    command -v unshare >/dev/null && command -v nsenter >/dev/null || die "util-linux unshare/nsenter are not installed" 3
    if ! ip netns add dcpo-probe 2>"$STATE/probe.log"; then
        die "network namespaces do not work here: $(head -n 1 "$STATE/probe.log")" 3
    fi
    ip netns del dcpo-probe
    # the names are global: one namespace cluster per machine
    if ip netns list | grep -qw "^$(node_name 1)" && [[ ! -s "$STATE/nodes.count" ]]; then
        die "network namespace $(node_name 1) exists but not in $STATE: another namespace cluster runs here; stop it first (DCPO_SLURM_STATE=<its state dir> bash tools/setup_slurm_cluster.sh stop)"
    fi
}

# The bridge, then per node: a namespace, a veth pair (host end on the bridge), the address, loopback up.
make_network() {
    local n="$1" i name
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((i = 1; i <= n; i++)); do
        name="$(node_name "$i")"
        ip netns list | grep -qw "^$name" || ip netns add "$name"
        if ! ip link show "dcpo-v$i" >/dev/null 2>&1; then
            ip link add "dcpo-v$i" type veth peer name eth0 netns "$name"
        fi
        ip link set "dcpo-v$i" master "$BRIDGE" up
        ip -n "$name" addr replace "$(node_addr "$i")/24" dev eth0
        ip -n "$name" link set eth0 up
        ip -n "$name" link set lo up
        ip -n "$name" route replace default via "$SUBNET.1"
    done
}

remove_network() {
    local i name pids
    for ((i = 1; i <= $(node_count); i++)); do
        name="$(node_name "$i")"
        if ip netns list | grep -qw "^$name"; then
            pids="$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ')"
            if [[ -n "${pids// /}" ]]; then
                say "killing processes left in $name: $pids"
                # shellcheck disable=SC2086
                kill -KILL $pids 2>/dev/null || true
                sleep 0.5
            fi
            ip netns del "$name"
        fi
        ip link del "dcpo-v$i" 2>/dev/null || true  # normally gone with the namespace's end
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

write_files() {
    local n="$1" i cpus mem_mib
    cpus="$(nproc)"
    # slurmd refuses a node whose configured memory exceeds what it sees; every node sees the whole
    # machine, so each is given an equal share (nothing enforces it: no cgroups)
    mem_mib="$(awk -v n="$n" '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9 / n}' /proc/meminfo)"
    mkdir -p "$STATE/ctld" "$STATE/log" "$STATE/node" "$STATE/munge"
    chmod 755 "$STATE"
    chown -R slurm:slurm "$STATE/ctld" "$STATE/log"
    runuser -u slurm -- test -w "$STATE/ctld" \
        || die "slurmctld runs as user slurm and cannot write $STATE/ctld (is a parent directory private?); set DCPO_SLURM_STATE to a directory such as /tmp/dcpo-slurm-cluster"
    {
        printf '127.0.0.1 localhost\n%s.1 %s\n' "$SUBNET" "$HOST"
        for ((i = 1; i <= n; i++)); do printf '%s %s\n' "$(node_addr "$i")" "$(node_name "$i")"; done
    } >"$STATE/hosts"
    for ((i = 1; i <= n; i++)); do
        mkdir -p "$STATE/nodes/$(node_name "$i")/spool"
    done
    echo "$n" >"$STATE/nodes.count"
    cat >"$STATE/slurm.conf.tmp" <<EOF
# written by dcpo-mcore tools/setup_slurm_cluster.sh: $n nodes in network namespaces; stop with
#   bash tools/setup_slurm_cluster.sh stop
ClusterName=dcpo-netns
SlurmctldHost=$HOST($SUBNET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=6818
$(slurm_conf_plugins)
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
# $STATE/node is each node's own directory $STATE/nodes/<name>, bind-mounted in its mount namespace
SlurmdSpoolDir=$STATE/node/spool
SlurmdPidFile=$STATE/node/slurmd.pid
SlurmdLogFile=$STATE/node/slurmd.log
JobRequeue=1
KillWait=10
MinJobAge=300
EOF
    for ((i = 1; i <= n; i++)); do
        printf 'NodeName=%s NodeAddr=%s NodeHostname=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
            "$(node_name "$i")" "$(node_addr "$i")" "$(node_name "$i")" "$cpus" "$mem_mib" >>"$STATE/slurm.conf.tmp"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >>"$STATE/slurm.conf.tmp"
    mv "$STATE/slurm.conf.tmp" "$STATE/slurm.conf"
}

start_munge() {
    local pid dir="$STATE/munge"
    pid="$(pid_of munge/munged)"
    if alive "$pid"; then say "munged already running (pid $pid)"; return 0; fi
    if [[ ! -s "$dir/munge.key" ]]; then
        dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    fi
    chown -R munge:munge "$dir"
    chmod 0755 "$dir"
    chmod 0400 "$dir/munge.key"
    rm -f "$dir/munged.pid"
    runuser -u munge -- /usr/sbin/munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" \
        || die "munged failed to start; see $dir/munged.log"
    wait_for_file "$dir/munged.pid" "munged pid file"
    say "munged started (pid $(pid_of munge/munged))"
}

start_slurmctld() {
    local pid
    pid="$(pid_of slurmctld)"
    if alive "$pid"; then say "slurmctld already running (pid $pid)"; return 0; fi
    rm -f "$STATE/slurmctld.pid"
    SLURM_CONF="$STATE/slurm.conf" /usr/sbin/slurmctld -c -i -f "$STATE/slurm.conf" \
        || die "slurmctld failed to start; see $STATE/log/slurmctld.log"
    wait_for_file "$STATE/slurmctld.pid" "slurmctld pid file"
    say "slurmctld started (pid $(pid_of slurmctld)) on $SUBNET.1:$CTLD_PORT"
}

# One slurmd inside node i's namespaces: a UTS namespace for its hostname and a mount namespace in which
# the node's own directory covers $STATE/node and the cluster's hosts file covers /etc/hosts.
start_slurmd() {
    local i="$1" name pid
    name="$(node_name "$i")"
    pid="$(pid_of "nodes/$name/slurmd")"
    if alive "$pid"; then say "slurmd $name already running (pid $pid)"; return 0; fi
    rm -f "$STATE/nodes/$name/slurmd.pid"
    # nsenter, not `ip netns exec`: the latter remounts /sys, which hides /sys/fs/cgroup from slurmd
    SLURM_CONF="$STATE/slurm.conf" nsenter --net="/run/netns/$name" unshare --uts --mount --propagation private \
        /bin/bash -c 'set -e; hostname "$1"; mount --bind "$2/hosts" /etc/hosts
                      mount --bind "$2/nodes/$1" "$2/node"; exec /usr/sbin/slurmd -f "$2/slurm.conf" -N "$1"' \
        slurmd-node "$name" "$STATE" \
        || die "slurmd $name failed to start; see $STATE/nodes/$name/slurmd.log"
    wait_for_file "$STATE/nodes/$name/slurmd.pid" "slurmd $name pid file"
    say "slurmd $name started (pid $(pid_of "nodes/$name/slurmd")) at $(node_addr "$i")"
}

wait_idle() {
    local n="$1" t=0 i states idle
    while ((t++ < DEADLINE_S * 2)); do
        alive "$(pid_of slurmctld)" || die "slurmctld exited during startup; see $STATE/log/slurmctld.log"
        for ((i = 1; i <= n; i++)); do
            alive "$(pid_of "nodes/$(node_name "$i")/slurmd")" \
                || die "slurmd $(node_name "$i") exited during startup; see $STATE/nodes/$(node_name "$i")/slurmd.log"
        done
        states="$(SLURM_CONF="$STATE/slurm.conf" timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null || true)"
        idle="$(awk '$2 == "idle" || $2 == "mixed" || $2 == "allocated"' <<<"$states" | wc -l)"
        if ((idle == n)); then say "all $n nodes are idle"; return 0; fi
        while read -r node state; do
            case "$state" in
                down* | drain* | *fail*) SLURM_CONF="$STATE/slurm.conf" scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
            esac
        done <<<"$states"
        sleep 0.5
    done
    die "not every node became idle within ${DEADLINE_S}s: $(tr '\n' ';' <<<"$states"); see $STATE/log and $STATE/nodes/*/slurmd.log"
}

cmd_start() {
    local n="$1" i
    ((n >= 1)) || die "--nodes must be at least 1" 2
    mkdir -p "$STATE"
    # a failed start leaves nothing running: stop what was started, by PID, and remove the namespaces
    trap 'rc=$?; if ((rc != 0 && rc != 3)); then cmd_stop >&2 || true; fi' EXIT
    install_packages
    preflight
    write_files "$n"
    make_network "$n"
    start_munge
    start_slurmctld
    for ((i = 1; i <= n; i++)); do start_slurmd "$i"; done
    wait_idle "$n"
    trap - EXIT
    say "ready: export SLURM_CONF=$STATE/slurm.conf, then sbatch -N $n ...; stop with: bash tools/setup_slurm_cluster.sh stop"
}

cmd_stop() {
    local i
    [[ -d "$STATE" ]] || { say "nothing to stop ($STATE does not exist)"; return 0; }
    for ((i = 1; i <= $(node_count); i++)); do stop_pid "nodes/$(node_name "$i")/slurmd"; done
    stop_pid slurmctld
    stop_pid munge/munged
    remove_network
    say "stopped; the namespaces and the bridge are removed"
}

cmd_status() {
    local i pid rc=0 name
    for name in munge/munged slurmctld; do
        pid="$(pid_of "$name")"
        if alive "$pid"; then say "${name#munge/} running (pid $pid)"; else say "${name#munge/} not running"; rc=1; fi
    done
    for ((i = 1; i <= $(node_count); i++)); do
        pid="$(pid_of "nodes/$(node_name "$i")/slurmd")"
        if alive "$pid"; then say "slurmd $(node_name "$i") running (pid $pid) at $(node_addr "$i")"
        else say "slurmd $(node_name "$i") not running"; rc=1; fi
    done
    if ((rc == 0)); then SLURM_CONF="$STATE/slurm.conf" sinfo -N -h -o '%N %T %c CPUs %m MiB' || true; fi
    return "$rc"
}

nodes=3
cmd=""
while (($#)); do
    case "$1" in
        --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
        --nodes=*) nodes="${1#--nodes=}"; shift ;;
        start | stop | status) cmd="$1"; shift ;;
        *) die "usage: bash tools/setup_slurm_cluster.sh [start [--nodes N]|stop|status]" 2 ;;
    esac
done
[[ "$nodes" =~ ^[0-9]+$ ]] || die "--nodes must be a number (got '$nodes')" 2
case "${cmd:-start}" in
    start) cmd_start "$nodes" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
esac
