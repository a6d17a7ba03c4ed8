# shellcheck shell=bash
# Shared body of slurm/dcpo_colocated.sbatch and slurm/dcpo_disagg.sbatch. Sourced, not run.
#
# It only sets up the environment and runs command lines that Python computed
# (python -m dcpo_mcore.launch.slurm_env): every value arrives shlex-quoted, and user arguments
# ("$@": CONFIG key=value ...) are passed on as separate words, never re-parsed by the shell.
#
# Environment knobs (all optional):
#   DCPO_ROOT        repository root (default: the submit directory)
#   DCPO_VENV        virtualenv (default: $DCPO_ROOT/.venv)
#   DCPO_ENV_SCRIPT  a file sourced first, e.g. `module load cuda/12.4`
#   DCPO_LOG_ROOT    parent of the per-job log directory (default: logs/slurm)
#   DCPO_TRAIN_MODULE  python module run as the trainer (default: dcpo_mcore.cli; tests use a stand-in)

DCPO_STEP_PIDS=()
DCPO_STEP_NAMES=()
DCPO_TRAINER_PID=""
DCPO_DEAD_STEP=""  # the service step whose death stopped the job
DCPO_TORN_DOWN=0

dcpo_log() { printf '[dcpo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

dcpo_alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

dcpo_setup_env() {
    DCPO_ROOT="${DCPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
    cd "$DCPO_ROOT" || { dcpo_log "error: cannot cd to DCPO_ROOT=$DCPO_ROOT"; exit 2; }
    if [[ -n "${DCPO_ENV_SCRIPT:-}" ]]; then
        # shellcheck disable=SC1090
        source "$DCPO_ENV_SCRIPT"
    fi
    DCPO_VENV="${DCPO_VENV:-$DCPO_ROOT/.venv}"
    DCPO_PY="$DCPO_VENV/bin/python"
    [[ -x "$DCPO_PY" ]] || { dcpo_log "error: no python at $DCPO_PY; run tools/setup_env.sh or set DCPO_VENV"; exit 2; }
    export PATH="$DCPO_VENV/bin:$PATH"
    export PYTHONPATH="$DCPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1
}

# dcpo_resolve MODE CONFIG [key=value ...]: sets the DCPO_* variables (see dcpo_mcore/launch/slurm_env.py)
dcpo_resolve() {
    local mode="$1" env_sh
    shift
    (($# >= 1)) || { dcpo_log "usage: sbatch $0 CONFIG.yaml [key=value ...]"; exit 2; }
    env_sh="$("$DCPO_PY" -m dcpo_mcore.launch.slurm_env --mode "$mode" -- "$@")" || exit 2
    eval "$env_sh"
    mkdir -p "$DCPO_LOG_DIR"
    dcpo_log "job $DCPO_JOB_ID attempt $DCPO_RESTART ($DCPO_MODE): logs in $DCPO_LOG_DIR, run dir $DCPO_RUN_DIR"
    "$DCPO_PY" -m dcpo_mcore.launch.slurm_env --mode "$mode" --explain -- "$@" >>"$DCPO_LOG_DIR/launcher.log" 2>&1 || true
}

# dcpo_step NAME SRUN-OPTIONS... COMMAND...: one srun in the background, output appended to NAME.log
dcpo_step() {
    local name="$1" log
    shift
    log="$DCPO_LOG_DIR/$name.log"
    printf '\n===== %s: job %s attempt %s, %s =====\n' "$name" "$DCPO_JOB_ID" "$DCPO_RESTART" "$(date)" >>"$log"
    srun "$@" >>"$log" 2>&1 &
    DCPO_STEP_PIDS+=("$!")
    DCPO_STEP_NAMES+=("$name")
    dcpo_log "started step $name (srun pid $!), log $log"
}

# Stop every step we started: SIGTERM to each srun (it forwards to its tasks), SIGKILL after 60 s.
dcpo_teardown() {
    if ((DCPO_TORN_DOWN)); then return 0; fi
    DCPO_TORN_DOWN=1
    local i pid t=0 left
    for i in "${!DCPO_STEP_PIDS[@]}"; do
        pid="${DCPO_STEP_PIDS[$i]}"
        if dcpo_alive "$pid"; then
            dcpo_log "stopping step ${DCPO_STEP_NAMES[$i]} (srun pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    while ((t++ < 60)); do
        left=0
        for pid in "${DCPO_STEP_PIDS[@]}"; do
            if dcpo_alive "$pid"; then left=1; fi
        done
        if ((left == 0)); then break; fi
        sleep 1
    done
    for i in "${!DCPO_STEP_PIDS[@]}"; do
        pid="${DCPO_STEP_PIDS[$i]}"
        if dcpo_alive "$pid"; then
            dcpo_log "step ${DCPO_STEP_NAMES[$i]} ignored SIGTERM for 60 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
}

dcpo_on_exit() {
    local rc=$?
    set +e
    dcpo_teardown
    exit "$rc"
}

# SIGUSR1 to the batch shell (scancel --batch -s USR1, or --signal=B:USR1@T): pass it to the trainer step;
# srun forwards it to every rank. (--signal=USR1@T without B: reaches the ranks directly.)
dcpo_on_usr1() {
    if dcpo_alive "$DCPO_TRAINER_PID"; then
        dcpo_log "SIGUSR1: forwarding to the trainer step (srun pid $DCPO_TRAINER_PID)"
        kill -USR1 "$DCPO_TRAINER_PID" 2>/dev/null || true
    else
        dcpo_log "SIGUSR1 before the trainer started: nothing to checkpoint yet"
    fi
}

# Wait for the trainer; fail if a service step (server/router) dies first.
dcpo_wait_trainer() {
    local i pid rc=0
    while dcpo_alive "$DCPO_TRAINER_PID"; do
        for i in "${!DCPO_STEP_PIDS[@]}"; do
            pid="${DCPO_STEP_PIDS[$i]}"
            if [[ "$pid" == "$DCPO_TRAINER_PID" ]]; then continue; fi
            if ! dcpo_alive "$pid"; then
                dcpo_log "error: step ${DCPO_STEP_NAMES[$i]} exited while the trainer was running; see $DCPO_LOG_DIR/${DCPO_STEP_NAMES[$i]}.log"
                DCPO_DEAD_STEP="${DCPO_STEP_NAMES[$i]}"
                return 1
            fi
        done
        sleep 2 &
        wait "$!" || true  # returns early when a trap fires
    done
    wait "$DCPO_TRAINER_PID" || rc=$?
    return "$rc"
}

# dcpo_main MODE CONFIG [key=value ...]
dcpo_main() {
    local mode="$1" rc=0
    shift
    trap dcpo_on_exit EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    trap dcpo_on_usr1 USR1
    dcpo_setup_env
    dcpo_resolve "$mode" "$@"

    dcpo_step sglang "${DCPO_SRUN_SERVER[@]}" "${DCPO_SERVER_CMD[@]}"
    "$DCPO_PY" -m dcpo_mcore.launch.wait_healthy "${DCPO_SERVER_URLS[@]}" --deadline "$DCPO_STARTUP_TIMEOUT_S" \
        --pid "${DCPO_STEP_PIDS[0]}" || exit 1
    if ((${#DCPO_ROUTER_CMD[@]})); then
        dcpo_step router "${DCPO_SRUN_ROUTER[@]}" "${DCPO_ROUTER_CMD[@]}"
        "$DCPO_PY" -m dcpo_mcore.launch.wait_healthy "$DCPO_ROUTER_URL" --deadline 120 \
            --pid "${DCPO_STEP_PIDS[1]}" || exit 1
    fi

    rm -f "$DCPO_PREEMPT_MARKER"
    dcpo_step trainer "${DCPO_SRUN_TRAIN[@]}" "${DCPO_TRAIN_CMD[@]}"
    DCPO_TRAINER_PID="${DCPO_STEP_PIDS[-1]}"
    dcpo_wait_trainer || rc=$?

    if ((rc == 0)) && [[ -e "$DCPO_PREEMPT_MARKER" ]]; then
        dcpo_log "trainer checkpointed after SIGUSR1 ($DCPO_PREEMPT_MARKER); requeueing job $DCPO_JOB_ID"
        dcpo_teardown
        scontrol requeue "$DCPO_JOB_ID" || { dcpo_log "error: scontrol requeue failed; resubmit to resume"; exit 1; }
        exit 0
    fi
    if ((rc == 0)); then
        dcpo_log "trainer finished"
    elif [[ -n "$DCPO_DEAD_STEP" ]]; then
        dcpo_log "error: stopping the job because step $DCPO_DEAD_STEP died; the trainer resumes from its last checkpoint when resubmitted"
    else
        dcpo_log "error: trainer failed (exit $rc); see $DCPO_LOG_DIR/trainer.log"
    fi
    exit "$rc"
}
