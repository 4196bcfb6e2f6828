#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trainq's Slurm integration tests: installs Debian's
# slurmctld, slurmd, slurm-client and munge, writes /etc/slurm/slurm.conf and gres.conf for this
# host, starts munged, slurmctld and slurmd as plain daemons (containers have no systemd), waits
# for the node to be idle, then proves the cluster works by running and cancelling a job.
#
#   deploy/slurm/local-cluster.sh           set up (if needed) and verify; idempotent
#   deploy/slurm/local-cluster.sh --stop    cancel this cluster's jobs and stop the three daemons
#   deploy/slurm/local-cluster.sh --force   also replace a slurm.conf this script did not write
#
# A second run is a quick no-op that still verifies. Setting up needs root (or password-less
# sudo); verifying a cluster that is already up does not. Exit codes:
#   0 ready   2 bad usage   3 needs root and there is no password-less sudo
#   4 /etc/slurm/slurm.conf was not written by this script (pass --force to replace it)
#   5 a daemon did not come up (the log tails are printed)   6 the test jobs did not behave
set -euo pipefail

# Debian keeps the daemons in /usr/sbin, which an ordinary user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
conf_dir=/etc/slurm
slurm_conf=$conf_dir/slurm.conf
gres_conf=$conf_dir/gres.conf
log_dir=/var/log/slurm
munge_key=/etc/munge/munge.key
# The first line of every file this script writes; without it a config is someone else's.
marker="# Written by trainq's deploy/slurm/local-cluster.sh; rerun it rather than editing this file."
partition=debug
started_at=$EPOCHREALTIME

log() { echo "local-cluster: $*" >&2; }
die() {
    local code=$1
    shift
    log "error: $*"
    exit "$code"
}

# Re-runs this script as root through password-less sudo, or stops with exit code 3.
become_root() {
    [ "$(id -u)" = 0 ] && return
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n -- "$script" "$@"
    fi
    die 3 "setting up or stopping the local Slurm cluster needs root or password-less sudo." \
        "Run this script once as root, or set TRAINQ_SKIP_SLURM=1 to skip trainq's Slurm tests."
}

have_slurm_packages() {
    command -v sbatch >/dev/null && command -v slurmctld >/dev/null &&
        command -v slurmd >/dev/null && command -v munged >/dev/null
}

install_packages() {
    have_slurm_packages && return
    log "installing Debian's slurmctld, slurmd, slurm-client and munge"
    # slurm-wlm-basic-plugins (a dependency) has every plugin the config below names; the
    # recommended slurm-wlm-plugins would add some thirty packages nothing here uses.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

# Prints the pid in $1 if that process is alive and its command name is $2. A daemon killed a
# moment ago can linger as a zombie (state Z) until it is reaped, and that does not count.
running_pid() {
    local pid_file=$1 name=$2 pid stat
    pid=$(cat "$pid_file" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ] && echo "$pid"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if [ ! -s "$munge_key" ]; then
        log "creating $munge_key"
        mungekey --create --keyfile="$munge_key"
    fi
    chown munge:munge "$munge_key"
    chmod 0400 "$munge_key"
    # /run is a tmpfs, so after a reboot (or in a fresh container) this folder is gone.
    install -d -o munge -g munge -m 0755 /run/munge
    munge_works && return
    if ! running_pid /run/munge/munged.pid munged >/dev/null; then
        # A munged that died leaves its socket behind, and a new one refuses to start over it.
        rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
    fi
    runuser -u munge -- munged
    for _ in $(seq 50); do
        munge_works && return
        sleep 0.1
    done
    tail -n 20 /var/log/munge/munged.log >&2 || true
    die 5 "munged started but 'munge -n | unmunge' still fails"
}

# Prints slurm.conf for this host. The node line is what `slurmd -C` reads off the hardware, so
# slurmd never finds fewer CPUs or less memory than configured (which would drain the node).
slurm_conf_text() {
    local host=$1 gpus=$2 hardware
    hardware=$(slurmd -C | head -n 1)
    cat <<EOF
$marker
# A one-node test cluster: no cgroups (containers rarely allow them), no accounting daemon.
ClusterName=trainq-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cons_tres hands out single cores and GPUs; CR_Core leaves memory unallocated, so a job that
# asks for no memory does not take the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
# Finished jobs stay visible to squeue and scontrol for five minutes, Slurm's default and what
# most real clusters keep, so trainq's tests see what production sees.
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
$hardware NodeAddr=127.0.0.1 Gres=gpu:$gpus State=UNKNOWN
PartitionName=$partition Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# Prints gres.conf: this machine's NVIDIA GPUs, or else one stand-in GPU backed by /dev/null.
# Slurm accepts the stand-in, so jobs that ask for --gres=gpu:1 run on a GPU-less machine (they
# get CUDA_VISIBLE_DEVICES=0 and no usable device) and trainq can test its GPU request path.
gres_conf_text() {
    local host=$1 gpus=$2
    echo "$marker"
    if [ "$gpus" = 0 ]; then
        echo "# No /dev/nvidia[0-9]* here: one stand-in GPU, so that --gres=gpu:1 jobs can run."
        echo "NodeName=$host Name=gpu File=/dev/null"
    else
        echo "NodeName=$host Name=gpu File=/dev/nvidia[0-$((gpus - 1))]"
    fi
}

# Counts the NVIDIA GPUs; with none, the config declares one stand-in (see gres_conf_text).
real_gpu_count() {
    local devices=(/dev/nvidia[0-9]*)
    [ -e "${devices[0]}" ] && echo "${#devices[@]}" || echo 0
}

# Fails unless $1 is missing or was written by this script.
check_ours() {
    local file=$1
    [ ! -e "$file" ] || [ "$(head -n 1 "$file")" = "$marker" ] || [ "$force" = 1 ] ||
        die 4 "$file was not written by this script; pass --force to replace it"
}

# Fills the two config files' texts for this host into slurm_conf_wanted and gres_conf_wanted.
wanted_configs() {
    local gpus
    gpus=$(real_gpu_count)
    [ "$gpus" = 0 ] && gres_count=1 gres_kind="stand-in" || gres_count=$gpus gres_kind="real"
    slurm_conf_wanted=$(slurm_conf_text "$host" "$gres_count")
    gres_conf_wanted=$(gres_conf_text "$host" "$gpus")
}

configs_current() {
    [ "$(cat "$slurm_conf" 2>/dev/null)" = "$slurm_conf_wanted" ] &&
        [ "$(cat "$gres_conf" 2>/dev/null)" = "$gres_conf_wanted" ]
}

slurm_running() {
    running_pid /run/slurmctld.pid slurmctld >/dev/null && running_pid /run/slurmd.pid slurmd >/dev/null
}

write_configs() {
    install -d -m 0755 "$conf_dir" "$log_dir" /var/spool/slurmctld /var/spool/slurmd
    configs_current && return 1
    log "writing $slurm_conf and $gres_conf for node $host"
    printf '%s\n' "$slurm_conf_wanted" >"$slurm_conf.new" && mv "$slurm_conf.new" "$slurm_conf"
    printf '%s\n' "$gres_conf_wanted" >"$gres_conf.new" && mv "$gres_conf.new" "$gres_conf"
}

# Sends SIGTERM to the daemon in pid file $1 (command name $2), and SIGKILL after 15 s.
stop_daemon() {
    local pid
    pid=$(running_pid "$1" "$2") || return 0
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 150); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.1
    done
    log "$2 ignored SIGTERM for 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

start_slurm() {
    local config_changed=$1
    if [ "$config_changed" = 1 ]; then
        # A new node line needs both daemons restarted; `scontrol reconfigure` is not enough.
        stop_daemon /run/slurmd.pid slurmd
        stop_daemon /run/slurmctld.pid slurmctld
    fi
    if ! running_pid /run/slurmctld.pid slurmctld >/dev/null; then
        log "starting slurmctld"
        slurmctld || fail_with_logs "slurmctld would not start"
    fi
    if ! running_pid /run/slurmd.pid slurmd >/dev/null; then
        log "starting slurmd"
        slurmd || fail_with_logs "slurmd would not start"
    fi
}

fail_with_logs() {
    local name
    for name in slurmctld slurmd; do
        echo "----- last lines of $log_dir/$name.log -----" >&2
        tail -n 25 "$log_dir/$name.log" >&2 2>/dev/null || echo "(no log)" >&2
    done
    die 5 "$*"
}

# Waits up to 60 s for the node to accept jobs. A node that comes back down or drained (after a
# crash, or with stale saved state) is resumed, which needs root.
wait_for_node() {
    local state="" resumed=0
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        case $state in
            idle | mixed | allocated | completing) return ;;
            down | drained | draining | drain | fail | failing)
                if [ "$resumed" = 0 ] && [ "$(id -u)" = 0 ]; then
                    log "node $host is $state; resuming it"
                    scontrol update nodename="$host" state=resume || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.5
    done
    fail_with_logs "node $host is not up after 60 s (sinfo says '${state:-nothing}')"
}

job_state() { squeue -h -t all -j "$1" -o %T 2>/dev/null || true; }

# Waits up to $2 seconds for job $1 to reach one of the states listed in $3 (space-separated).
wait_for_job_state() {
    local job=$1 seconds=$2 states=$3 state=""
    for _ in $(seq $((seconds * 5))); do
        state=$(job_state "$job")
        [[ -n $state && " $states " == *" $state "* ]] && return
        sleep 0.2
    done
    die 6 "job $job is '${state:-gone}' after ${seconds} s, expected one of: $states"
}

# Runs one job to completion and cancels another, as trainq will.
verify() {
    local dir job
    dir=$(mktemp -d /tmp/trainq-slurm-check.XXXXXX)
    # shellcheck disable=SC2064 # expand now: dir is local
    trap "rm -rf '$dir'" EXIT
    job=$(sbatch --parsable --job-name=local-cluster-check --output="$dir/hello.out" \
        --wrap 'echo hello; sleep 1') || die 6 "sbatch failed"
    wait_for_job_state "$job" 60 "COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY"
    [ "$(job_state "$job")" = COMPLETED ] || die 6 "job $job ended $(job_state "$job")"
    grep -qx hello "$dir/hello.out" || die 6 "job $job did not write hello to its output file"

    job=$(sbatch --parsable --job-name=local-cluster-check --output=/dev/null --wrap 'sleep 100') ||
        die 6 "sbatch failed"
    wait_for_job_state "$job" 60 RUNNING
    scancel "$job"
    wait_for_job_state "$job" 30 CANCELLED
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || die 6 "cancelled job $job is still in squeue"
}

stop_cluster() {
    check_ours "$slurm_conf"
    if slurm_running; then
        # Jobs would outlive slurmd under their slurmstepd; a test cluster stops with none left.
        scancel --partition="$partition" 2>/dev/null || true
        for _ in $(seq 200); do
            [ -z "$(squeue -h -p "$partition" 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_daemon /run/slurmd.pid slurmd
    stop_daemon /run/slurmctld.pid slurmctld
    stop_daemon /run/munge/munged.pid munged
    log "stopped"
}

stop=0
force=0
for arg in "$@"; do
    case $arg in
        --stop) stop=1 ;;
        --force) force=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$script" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die 2 "unknown argument '$arg' (try --help)" ;;
    esac
done

host=$(hostname -s)
if [ "$stop" = 1 ]; then
    become_root "$@"
    stop_cluster
    exit 0
fi

did="already running"
if ! have_slurm_packages || ! munge_works || ! { wanted_configs && configs_current; } || ! slurm_running; then
    become_root "$@"
    check_ours "$slurm_conf"
    check_ours "$gres_conf"
    install_packages
    start_munge
    wanted_configs
    config_changed=0
    write_configs && config_changed=1
    start_slurm "$config_changed"
    did="set up"
fi
wanted_configs
wait_for_node
verify

cpus=$(sinfo -h -n "$host" -o %c)
version=$(sinfo -V | awk '{print $2}')
seconds=$(awk -v a="$started_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "local-cluster: ready: node $host, $cpus CPUs, $gres_count $gres_kind GPU, partition $partition," \
    "Slurm $version, $slurm_conf; $did and verified in ${seconds} s"
