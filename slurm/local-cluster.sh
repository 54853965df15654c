#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try `snakemake --profile slurm` locally
# and for CI (tests/test_slurm.py). Debian/Ubuntu, as root.
#
#   slurm/local-cluster.sh install   apt-get slurm-wlm and munge when missing
#   slurm/local-cluster.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld,
#                                    slurmd; returns once the node is idle
#   slurm/local-cluster.sh stop      stop the daemons this script started
#   slurm/local-cluster.sh status
#
# start and stop are idempotent. A slurm.conf not written by this script is never touched:
# on a machine that already belongs to a cluster, start refuses.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by pefts slurm/local-cluster.sh"
STATE=/var/lib/slurm
LOGS=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
MUNGE_OURS=/run/pefts-local-cluster.munged   # present when start launched munged
PARTITION=debug
GRES=/etc/slurm/gres.conf
# GPUs declared as a generic resource, so jobs can ask for --gpus=1 on a machine without
# any: gres.conf names one device file per GPU, and slurmd only needs those files to
# exist. Missing ones are made as placeholder character devices (NVIDIA's major 195);
# nothing can use them, and stop removes the ones start made.
GPUS=${PEFTS_LOCAL_GPUS:-2}
GPU_FILES_OURS=/run/pefts-local-cluster.gpu-files

die() { echo "local-cluster: $*" >&2; exit 1; }

ours() { [[ -f $CONF ]] && head -1 "$CONF" | grep -qxF "$MARK"; }

node_state() { sinfo -h -N -o %t 2>/dev/null | head -1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) == 0 ]] || die "installing slurm-wlm and munge needs root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # the packages' own services are not used (and cannot start in containers)
    apt-get install -y -q --no-install-recommends slurm-wlm munge
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # RealMemory as slurmd measures it, so the node registers without "Low RealMemory"
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [[ -n $mem ]] || die "slurmd -C did not report RealMemory"
    mkdir -p /etc/slurm "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
    chown slurm:slurm "$STATE/slurmctld" "$LOGS"
    # addresses given: the machine's name need not resolve (containers, fresh images)
    cat >"$CONF" <<EOF
$MARK
ClusterName=pefts-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no accounting: finished jobs stay visible to squeue (--slurm-status-command squeue)
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

write_gres() {
    local k files=()
    for ((k = 0; k < GPUS; k++)); do
        if [[ ! -e /dev/nvidia$k ]]; then
            mknod -m 000 "/dev/nvidia$k" c 195 "$k" 2>/dev/null || touch "/dev/nvidia$k"
            echo "/dev/nvidia$k" >>"$GPU_FILES_OURS"
        fi
        files+=("/dev/nvidia$k")
    done
    {
        echo "$MARK"
        for file in "${files[@]}"; do echo "Name=gpu File=$file"; done
    } >"$GRES"
}

start_munge() {
    if munge -n </dev/null >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$MUNGE_OURS"
}

start() {
    install
    if [[ $(node_state) == idle ]]; then
        echo "local-cluster: already running (node idle)"
        return
    fi
    [[ $(id -u) == 0 ]] || die "starting the cluster needs root"
    if [[ -f $CONF ]] && ! ours; then
        die "$CONF exists and was not written by this script; not touching it"
    fi
    write_conf
    write_gres
    start_munge
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(node_state)
        if [[ $state == idle ]]; then
            echo "local-cluster: node $(hostname -s) idle ($(nproc) CPUs, $GPUS placeholder GPUs), partition $PARTITION"
            return
        fi
        # a node left down or drained by an earlier run comes back on resume
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        fi
        sleep 1
    done
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    die "node not idle after 60 s (state '${state:-none}')"
}

stop() {
    ours || { echo "local-cluster: no cluster of this script here"; return; }
    if pgrep -x slurmctld >/dev/null; then
        # stops slurmctld and every slurmd it knows
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    for _ in $(seq 30); do
        pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
        sleep 1
    done
    if [[ -f /run/slurmd.pid ]] && pgrep -x slurmd >/dev/null; then
        kill "$(cat /run/slurmd.pid)" 2>/dev/null || true
    fi
    if [[ -f $GPU_FILES_OURS ]]; then
        xargs rm -f <"$GPU_FILES_OURS"
        rm -f "$GPU_FILES_OURS"
    fi
    if [[ -f $MUNGE_OURS && -f $MUNGE_PID ]]; then
        kill "$(cat "$MUNGE_PID")" 2>/dev/null || true
        rm -f "$MUNGE_OURS"
    fi
    echo "local-cluster: stopped"
}

status() {
    if ! command -v sinfo >/dev/null; then
        echo "not installed"
        return 1
    fi
    sinfo -N -o "%N %P %t %c %m" 2>/dev/null || { echo "not running"; return 1; }
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 install|start|stop|status" ;;
esac
