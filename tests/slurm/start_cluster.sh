#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian/Ubuntu, as root): the tests in
# tests/test_slurm.py and anyone who wants to try `hydra/launcher=slurm` before their cluster.
# Installs Debian's slurm-wlm and munge where missing, writes /etc/slurm/slurm.conf with this host
# as the one node of one partition (`debug`), starts munged, slurmctld and slurmd, and waits until
# `sinfo` shows the node idle. Idempotent: with the cluster up it does nothing.
#
#   sudo tests/slurm/start_cluster.sh          # then: sinfo; sbatch --wrap 'hostname'
#   sudo tests/slurm/start_cluster.sh --stop   # ends the three daemons
#
# No accounting database (slurmdbd): `sacct` answers "accounting storage is disabled", so submitit
# cannot ask SLURM for a job's state and warns on every poll; it still sees a job end by its
# result file. Without cgroups (proctrack/linuxproc, task/none) it runs in containers too.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
HOST=$(hostname -s)

stop() {
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

node_idle() {
    sinfo --noheader --nodes="$HOST" --format=%t 2>/dev/null | grep -qE '^(idle|mix|alloc)'
}

if [[ ${1:-} == --stop ]]; then
    stop
    exit 0
fi
if command -v sinfo >/dev/null && node_idle; then
    echo "SLURM is up: $(sinfo --noheader --format='%P %D node(s) %t %c CPUs')"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "$0: run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the key the daemons and clients sign with (Debian's package makes one; make it if not).
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

# slurm.conf: every CPU of this host (nproc), half its memory as RealMemory so a job's --mem is
# checked against what the machine can give; cores are the consumable resource, so one-core jobs
# run side by side.
MEM_MB=$(($(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 2048))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
cat > "$CONF" <<EOF
# A one-node cluster written by tests/slurm/start_cluster.sh
ClusterName=lmlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits this long (default 120 s) before it may start again.
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    if node_idle; then
        echo "SLURM is up: $(sinfo --noheader --format='%P %D node(s) %t %c CPUs')"
        exit 0
    fi
    # A node left down or drained by an earlier start is put back in service.
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "$0: the node did not become idle in 60 s; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
