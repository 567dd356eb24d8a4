#!/usr/bin/env bash
# A real single-node SLURM 22.05 from Debian packages, for tests/test_slurm.py (root only).
#   tests/slurm/start.sh DIR   install the packages if missing, write the configuration into DIR, start
#                              munged, MariaDB, slurmdbd, slurmctld and two slurmd (partition gpu: node gpunode,
#                              8 CPUs, 32000 MB, one declared GPU; partition cpu: node cpunode, 4 CPUs, 8000 MB)
#   tests/slurm/stop.sh DIR    stop them again, by the pid files in DIR/run
# /etc/slurm/slurm.conf becomes a link to DIR/slurm.conf (removed by stop.sh); it refuses to replace a real one.
# Everything listens on 127.0.0.1 only; the daemons read DIR (SLURM_CONF=DIR/slurm.conf).  The GPU is declared, not real
# (gres.conf File=/dev/null): jobs get gres/gpu=1 and CUDA_VISIBLE_DEVICES=0.  Nodes may be declared larger than
# the machine (SlurmdParameters=config_overrides); memory is not enforced (no cgroups).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: start.sh DIR}")
PORT=${SLURM_TEST_PORT:-16817}   # slurmctld; slurmdbd +2, the two slurmd +4 and +5, MariaDB +13
HOST=$(hostname -s)
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
step() { printf '[slurm] %s (%d s)\n' "$1" "$SECONDS"; }
wait_for() {  # wait_for SECONDS WHAT CMD...: until CMD succeeds
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "[slurm] $what did not come up in $limit s; logs in $DIR/log" >&2; exit 1
}

missing=$(dpkg-query -W -f '${Package} ${db:Status-Status}\n' $PACKAGES 2>/dev/null | awk '$2 != "installed"' || true)
if [ -n "$missing" ] || [ "$(dpkg-query -W $PACKAGES 2>/dev/null | wc -l)" -ne 6 ]; then
  step "installing $PACKAGES"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES > /dev/null
fi
mkdir -p "$DIR"/{db,state,spool,log,run}
export SLURM_CONF=$DIR/slurm.conf

cat > "$DIR/slurm.conf" <<CONF
ClusterName=repro
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=gpunode NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + 4)) CPUs=8 RealMemory=32000 Gres=gpu:1
NodeName=cpunode NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + 5)) CPUs=4 RealMemory=8000
PartitionName=gpu Nodes=gpunode MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=cpunode MaxTime=INFINITE State=UP Default=YES
CONF
cat > "$DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=gpunode Name=gpu Count=1 File=/dev/null
CONF
cat > "$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 13))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$DIR/slurmdbd.conf"
# Clients inside jobs read /etc/slurm/slurm.conf: the slurm-jobstep plugin drops SLURM_CONF from the
# environment of the command it runs (srun).  Link it to ours, never over a site's own configuration.
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$DIR/slurm.conf" ]; then
  echo "[slurm] /etc/slurm/slurm.conf exists and is not ours: this machine has a SLURM; not starting another" >&2
  exit 1
fi
mkdir -p /etc/slurm && ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf

step "munged"
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$DIR/run/munged.pid"   # started here: stop.sh stops it
fi
wait_for 10 munged munge -n

step "MariaDB (127.0.0.1:$((PORT + 13)))"
[ -d "$DIR/db/mysql" ] || mariadb-install-db --user=root --datadir="$DIR/db" --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
mariadbd --user=root --datadir="$DIR/db" --bind-address=127.0.0.1 --port=$((PORT + 13)) \
  --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
  < /dev/null > "$DIR/log/mariadb.out" 2>&1 &
wait_for 30 MariaDB mariadb --socket="$DIR/run/mysql.sock" -e "select 1"
mariadb --socket="$DIR/run/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

step "slurmdbd"
slurmdbd
wait_for 30 slurmdbd sacctmgr -i show cluster
sacctmgr -i add cluster repro >/dev/null 2>&1 || true

step "slurmctld and two slurmd"
slurmctld -c
wait_for 30 slurmctld scontrol ping
slurmd -N gpunode
slurmd -N cpunode
sacctmgr -i add account repro Cluster=repro Description=tests Organization=tests >/dev/null 2>&1 || true
sacctmgr -i add user root Account=repro >/dev/null 2>&1 || true
idle() { [ "$(sinfo --noheader --Node --format '%t' | grep -c idle)" -eq 2 ]; }
wait_for 60 "two idle nodes" idle
step "up"
sinfo --Node --format '%N %P %c %m %G %t'
