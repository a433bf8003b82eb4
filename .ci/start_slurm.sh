#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian, run as root), for tests.
#
#   bash .ci/start_slurm.sh     # exit 0: sinfo/srun/sbatch work; else one line on stderr
#
# Idempotent: if `sinfo` answers and `srun -N1 hostname` runs, it exits 0 at once.
# Otherwise it installs slurm-wlm and munge with apt-get if missing, starts munged as
# the munge user, writes /etc/slurm/slurm.conf (no cgroups, no accounting), starts
# slurmctld and slurmd as plain daemons (no systemd needed), waits for the node to be
# idle and checks srun and sbatch. Logs: /var/log/slurm/ and /var/log/munge/.
set -uo pipefail

say() { echo "start_slurm: $*"; }
die() {
    # Show the end of the daemon logs on stdout for debugging, then one line on stderr.
    for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
        [ -s "$f" ] && [ -r "$f" ] && { echo "--- tail $f"; tail -n 5 "$f" 2>/dev/null; }
    done
    echo "start_slurm: cannot start SLURM: $*" >&2
    exit 1
}

T=${SLURM_START_TIMEOUT:-60}
NODE=$(hostname -s 2>/dev/null || hostname)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

MARK='dltips .ci/start_slurm.sh'
# running NAME: a live (non-zombie) process called NAME exists.
running() { ps -C "$1" -o stat= 2>/dev/null | grep -qv '^[ZX]'; }
cluster_works() {
    command -v sinfo >/dev/null 2>&1 && command -v srun >/dev/null 2>&1 || return 1
    # Fast path for our own cluster: with munged or slurmctld dead, sinfo would hang 10-50 s.
    if grep -qs "$MARK" "$CONF"; then
        running munged && running slurmctld && running slurmd || return 1
    fi
    timeout 10 sinfo -h >/dev/null 2>&1 || return 1
    [ "$(timeout 30 srun -N1 -t 1 hostname 2>/dev/null)" = "$NODE" ]
}

# ---------------------------------------------------------------- 0. already running?
if cluster_works; then
    say "SLURM already works (node $NODE); nothing to do"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "not running as root and no working cluster found"
[ -n "$NODE" ] || die "hostname is empty"

# ---------------------------------------------------------------- 1. packages
need_pkgs=()
for p in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "apt-get not found; cannot install ${need_pkgs[*]}"
    say "installing ${need_pkgs[*]} with apt-get"
    # Keep package scripts from trying to start services (there is no systemd here).
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp /tmp/start_slurm_apt.XXXXXX)
    inst() { apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>"$apt_log" 2>&1; }
    inst || { apt-get update -q >>"$apt_log" 2>&1 && inst; }
    rc=$?
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || { tail -n 5 "$apt_log"; die "apt-get install ${need_pkgs[*]} failed (log: $apt_log)"; }
    rm -f "$apt_log"
fi
for b in munged munge unmunge slurmctld slurmd sinfo srun sbatch scontrol; do
    command -v "$b" >/dev/null || die "$b not found after installing slurm-wlm and munge"
done

# ---------------------------------------------------------------- 2. munge
id munge >/dev/null 2>&1 || die "user munge does not exist (munge package broken?)"
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
KEY=/etc/munge/munge.key
if [ ! -s "$KEY" ]; then
    say "creating munge key"
    mungekey --create --keyfile="$KEY" >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$KEY" bs=1024 count=1 status=none \
        || die "cannot create $KEY"
fi
chown munge:munge "$KEY" && chmod 0400 "$KEY"

# alive PID NAME: PID runs NAME and is not a zombie (PID 1 here may be slow to reap).
alive() {
    local st
    [ -n "$1" ] && [ "$(cat /proc/"$1"/comm 2>/dev/null)" = "$2" ] || return 1
    st=$(sed 's/.*) //' /proc/"$1"/stat 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
stop_pidfile() {
    local f=$1 name=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if alive "$pid" "$name"; then
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 40); do alive "$pid" "$name" || break; sleep 0.25; done
        alive "$pid" "$name" && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$f"
}
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! running munged || ! munge_works; then
    stop_pidfile /run/munge/munged.pid munged   # a munged that runs but does not answer
    say "starting munged"
    # --force: go on past a stale socket/lock left by a munged that died.
    if command -v runuser >/dev/null; then
        runuser -u munge -- munged --force || die "munged failed to start (see /var/log/munge/munged.log)"
    else
        su -s /bin/sh munge -c "munged --force" || die "munged failed to start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 1 20); do munge_works && break; sleep 0.25; done
    munge_works || die "munged runs but munge -n | unmunge fails (see /var/log/munge/munged.log)"
    # Only munged had died? Then slurmctld/slurmd need no restart.
    if running slurmctld && running slurmd && cluster_works; then
        say "SLURM works again (node $NODE)"
        exit 0
    fi
fi

# ---------------------------------------------------------------- 3. slurm.conf
# Stop daemons that we (or an earlier run) started but that do not give a working cluster.
stop_pidfile "$SLURMD_PID" slurmd
stop_pidfile "$CTLD_PID" slurmctld

CPUS=$(nproc)
# RealMemory as slurmd itself measures it (a larger value would drain the node).
MEM=$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p' | head -n1)
mem_line=""
[ -n "$MEM" ] && [ "$MEM" -gt 1 ] 2>/dev/null && mem_line=" RealMemory=$MEM"

mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
chmod 0755 /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"

new_conf=$(cat <<EOF
# Written by dltips .ci/start_slurm.sh: a single-node test cluster (no cgroups, no accounting).
ClusterName=dltips
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS$mem_line State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ -f "$CONF" ] && ! grep -q "$MARK" "$CONF"; then
    say "backing up existing $CONF to $CONF.bak"
    cp -p "$CONF" "$CONF.bak"
fi
printf '%s\n' "$new_conf" >"$CONF"
chmod 0644 "$CONF"
# Debian's old path, in case a tool still looks there.
[ -d /etc/slurm-llnl ] && ! [ -e /etc/slurm-llnl/slurm.conf ] && ln -s "$CONF" /etc/slurm-llnl/slurm.conf
say "wrote $CONF (node $NODE, CPUs=$CPUS${MEM:+, RealMemory=$MEM})"

# ---------------------------------------------------------------- 4. daemons
export SLURM_CONF=$CONF
say "starting slurmctld"
slurmctld -f "$CONF" || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
for _ in $(seq 1 40); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.25; done
timeout 5 scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer scontrol ping (see $LOG_DIR/slurmctld.log)"

say "starting slurmd"
slurmd -f "$CONF" || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"

# ---------------------------------------------------------------- 5. wait for the node
say "waiting up to ${T}s for node $NODE to be idle"
deadline=$((SECONDS + T))
state=""
while [ $SECONDS -lt $deadline ]; do
    state=$(timeout 5 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*)
            timeout 5 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 ;;
    esac
    alive "$(cat "$SLURMD_PID" 2>/dev/null)" slurmd || die "slurmd exited (see $LOG_DIR/slurmd.log)"
    sleep 1
done
case "$state" in
    idle|mixed|allocated) ;;
    *) reason=$(timeout 5 sinfo -h -R -n "$NODE" -o '%E' 2>/dev/null | head -n1)
       die "node $NODE is '${state:-unknown}' after ${T}s${reason:+ (reason: $reason)}" ;;
esac
say "node $NODE is $state"

# ---------------------------------------------------------------- 6. checks
out=$(timeout 60 srun -N1 -t 1 hostname 2>&1) || die "srun -N1 hostname failed: $(echo "$out" | tail -n1)"
[ "$out" = "$NODE" ] || die "srun -N1 hostname printed '$out', expected '$NODE'"
say "srun -N1 hostname: ok"

bout=$(mktemp /tmp/start_slurm_sbatch.XXXXXX)
jid=$(timeout 10 sbatch --parsable -N1 -t 1 -o "$bout" --wrap hostname 2>&1) \
    || die "sbatch failed: $(echo "$jid" | tail -n1)"
jid=${jid%%;*}
for _ in $(seq 1 120); do
    [ -z "$(timeout 5 squeue -h -j "$jid" 2>/dev/null)" ] && break
    sleep 0.5
done
[ -z "$(timeout 5 squeue -h -j "$jid" 2>/dev/null)" ] || die "sbatch job $jid did not finish within 60s"
grep -qx "$NODE" "$bout" 2>/dev/null || die "sbatch job $jid wrote '$(head -c 200 "$bout" 2>/dev/null)', expected '$NODE'"
rm -f "$bout"
say "sbatch --wrap hostname: ok (job $jid)"
say "SLURM cluster is up: partition debug, node $NODE, $CPUS CPUs"
