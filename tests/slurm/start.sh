#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and by hand (docs/gpus-and-slurm.md).
#   tests/slurm/start.sh [STATE_DIR]         install what is missing, write the configs, start, wait for the node
#   tests/slurm/start.sh stop [STATE_DIR]    cancel its jobs and stop its daemons (tests/slurm/stop.sh does the same)
#   . STATE_DIR/env                          point sbatch/squeue/sacct (and Snakemake's plugin) at it
# Debian's Slurm 22.05 as root, no systemd: munged, mariadbd (accounting), slurmdbd, slurmctld and slurmd
# run from STATE_DIR (default /tmp/jowa-slurm) on free TCP ports, with their configs, state and logs
# there. One cluster per machine (see start_munge and write_configs). Running it again starts only what
# is down; stopping cancels its jobs first, so no job step outlives it.
set -euo pipefail

ACTION=start
if [[ ${1:-} == stop || ${1:-} == start ]]; then
    ACTION=$1
    shift
fi
STATE=$(realpath -m "${1:-/tmp/jowa-slurm}")
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

die() {
    echo "tests/slurm/start.sh: $*" >&2
    exit 1
}

alive() { [[ -s $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

stop_daemon() {
    local name=$1 pid
    alive "$name" || return 0
    pid=$(cat "$STATE/$name.pid")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$STATE/$name.pid"; return 0; }
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$STATE/$name.pid"
}

stop_cluster() {
    [[ -d $STATE ]] || return 0
    if alive slurmctld; then  # its jobs first, so no step outlives the cluster
        SLURM_CONF=$STATE/slurm.conf scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z $(SLURM_CONF=$STATE/slurm.conf squeue --noheader 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    for name in slurmd slurmctld slurmdbd mariadb munged; do stop_daemon "$name"; done
    [[ $(readlink /etc/slurm/slurm.conf) == "$STATE/slurm.conf" ]] && rm -f /etc/slurm/slurm.conf
    return 0
}

if [[ $ACTION == stop ]]; then
    stop_cluster
    exit 0
fi

install_missing() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "needs root to install ${missing[*]} (or install them first)"
    command -v apt-get >/dev/null || die "no apt-get to install ${missing[*]}: install Slurm, munge and MariaDB"
    echo "installing ${missing[*]}" >&2
    # policy-rc.d 101: the packages' own init scripts must not start the system-wide daemons
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    { apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; } \
        >"$STATE/apt.log" 2>&1 || { [[ -n $made_policy ]] && rm -f "$policy"; die "apt-get failed, see $STATE/apt.log"; }
    [[ -n $made_policy ]] && rm -f "$policy"
    return 0
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Wait until a command succeeds, or fail naming the log to read (at once if the daemon exited).
wait_for() {
    local what=$1 log=$2
    shift 2
    for _ in $(seq 120); do
        timeout 5 "$@" >/dev/null 2>&1 && return 0
        [[ -e $STATE/$what.pid ]] && ! alive "$what" && die "$what exited: $(tail -1 "$log")"
        sleep 0.5
    done
    die "$what did not come up in 60 s; see $log"
}

write_configs() {
    [[ -s $STATE/ports ]] || {
        echo "CTLD_PORT=$(free_port) SLURMD_PORT=$(free_port) DBD_PORT=$(free_port) DB_PORT=$(free_port)" \
            >"$STATE/ports"
    }
    # shellcheck disable=SC1091
    . "$STATE/ports"
    local node user
    node=$(slurmd -C | head -1)  # NodeName=<hostname> CPUs=... RealMemory=...
    [[ $node == NodeName=* ]] || die "slurmd -C did not describe this machine: $node"
    user=$(id -un)
    mkdir -p "$STATE/ctld" "$STATE/spool"
    cat >"$STATE/slurm.conf" <<EOF
# written by tests/slurm/start.sh; rerun it rather than editing this
ClusterName=jowa
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no systemd or delegated cgroups in a container: track processes by /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
# a job past its limit gets SIGTERM, then SIGKILL 5 s later; finished jobs stay in squeue 5 min
KillWait=5
OverTimeLimit=0
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoreFlags=job_comment
$node NodeAddr=127.0.0.1
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$user
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=jowa
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/slurmdbd.conf"  # slurmdbd refuses a config others can read
    printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' >"$STATE/cgroup.conf"
    # Snakemake's jobstep plugin drops SLURM_CONF from the environment of the srun it starts inside a job,
    # so the config must also be where Slurm looks without it: one cluster per machine
    local system=/etc/slurm/slurm.conf
    if [[ -e $system || -L $system ]] && [[ $(readlink "$system") != "$STATE/slurm.conf" ]]; then
        die "$system belongs to another Slurm setup; stop that cluster (or move the file) first"
    fi
    mkdir -p /etc/slurm && ln -sfn "$STATE/slurm.conf" "$system"
    cat >"$STATE/env" <<EOF
export SLURM_CONF=$STATE/slurm.conf
EOF
}

# Slurm 22.05 ignores AuthInfo=socket= on its connections to slurmdbd, so every cluster here shares the
# machine's munged at MUNGE's default socket: started (with this cluster's key) only if none answers
# there, and then stopped with this cluster.
start_munge() {
    munge --no-input >/dev/null 2>&1 && return 0
    alive munged && die "munged of $STATE runs but does not answer; see $STATE/munged.log"
    mkdir -p "$STATE/munge" /run/munge && chmod 700 "$STATE/munge"
    [[ -s $STATE/munge/munge.key ]] || mungekey --create --keyfile "$STATE/munge/munge.key"
    chmod 400 "$STATE/munge/munge.key"
    munged --force --key-file "$STATE/munge/munge.key" --pid-file "$STATE/munged.pid" \
        --log-file "$STATE/munged.log" --seed-file "$STATE/munge/munge.seed"
    wait_for munged "$STATE/munged.log" munge --no-input
}

start_mariadb() {
    alive mariadb && return 0
    if [[ ! -d $STATE/mysql/mysql ]]; then
        mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$STATE/mysql" \
            --auth-root-authentication-method=socket >"$STATE/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed; see $STATE/mariadb-install.log"
    fi
    mariadbd --no-defaults --user="$(id -un)" --datadir="$STATE/mysql" --socket="$STATE/mysql.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/mariadb.pid" \
        --log-error="$STATE/mariadb.log" --innodb-buffer-pool-size=32M --skip-log-bin \
        >>"$STATE/mariadb.log" 2>&1 &
    wait_for mariadb "$STATE/mariadb.log" mariadb --no-defaults --socket="$STATE/mysql.sock" -e 'SELECT 1'
    mariadb --no-defaults --socket="$STATE/mysql.sock" <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'jowa';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'jowa';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurm() {
    export SLURM_CONF=$STATE/slurm.conf
    if ! alive slurmdbd; then
        slurmdbd
        wait_for slurmdbd "$STATE/slurmdbd.log" sacctmgr --noheader list cluster
    fi
    # the cluster, an account and this user in it, so sacct answers and the plugin finds an account
    local user
    user=$(id -un)
    [[ -n $(sacctmgr --noheader list cluster jowa format=cluster) ]] ||
        sacctmgr --immediate add cluster jowa >/dev/null
    [[ -n $(sacctmgr --noheader list account jowa format=account) ]] ||
        sacctmgr --immediate add account jowa cluster=jowa description=tests organization=jowa >/dev/null
    [[ -n $(sacctmgr --noheader list association user="$user" account=jowa format=account) ]] ||
        sacctmgr --immediate add user "$user" account=jowa cluster=jowa >/dev/null
    alive slurmctld || slurmctld -f "$SLURM_CONF"
    wait_for slurmctld "$STATE/slurmctld.log" scontrol ping
    alive slurmd || slurmd -f "$SLURM_CONF"
    wait_for "the node (idle in sinfo)" "$STATE/slurmd.log" \
        bash -c '[[ $(sinfo --noheader --format=%t) == idle* ]]'
}

mkdir -p "$STATE"
install_missing
write_configs
start_munge
start_mariadb
start_slurm
echo "Slurm cluster up: . $STATE/env; sinfo" >&2
sinfo
