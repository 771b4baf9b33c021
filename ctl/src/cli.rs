//! The command line (clap): every command and option of plexctl.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::failure::EXIT_CODES;

/// plexctl: manage a plexd cluster (disks, disk groups, volumes, plexes).
///
/// Examples:
///   plexctl --node 127.0.0.1:7701 disk init /tmp/x/disks/d1.img --name d1
///   plexctl --node a --cluster /tmp/x/cluster.toml dg create dg1 d1 d2 --shared
///   plexctl vol create dg1 vol1 1G --layout mirror --mirrors 2
///   plexctl --json cluster status
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Node to talk to: ADDR (host:port) or a node NAME of the cluster file.
    #[arg(long, env = "PLEXD_NODE", global = true)]
    pub(crate) node: Option<String>,
    /// The cluster file (to find a node by name, or any node).
    #[arg(long, env = "PLEXD_CLUSTER", global = true)]
    pub(crate) cluster: Option<PathBuf>,
    /// Machine-readable output (read commands).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Seconds to wait for the node's answer (default 150: longer than a change
    /// may take).
    #[arg(long, global = true, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Disks: `disk init PATH [--name NAME]`, `disk list`.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Disk groups.
    #[command(subcommand)]
    Dg(DgCmd),
    /// Volumes.
    #[command(subcommand)]
    Vol(VolCmd),
    /// Plexes (mirrors).
    #[command(subcommand)]
    Plex(PlexCmd),
    /// The configuration as a tree (dg / dm / v / pl / sd), like vxprint -ht.
    Print {
        /// Only this disk group.
        dg: Option<String>,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Background tasks (plex resyncs).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Exports a volume to hosts on every node (the default), or only on the node
    /// named with `--on`. Examples: export iscsi dg1 vol1 --on b;
    /// export nvmf dg1 vol1 --host nqn.2014-08.org.nvmexpress:uuid:...
    Export {
        /// Protocol: iscsi or nvmf (NVMe/TCP).
        protocol: String,
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// On every node (the default).
        #[arg(long, conflicts_with = "on")]
        all: bool,
        /// Only on node NAME (a node of the cluster file).
        #[arg(long, value_name = "NAME")]
        on: Option<String>,
        /// iscsi: target name (default iqn.2026-11.io.plexd:CLUSTER.DG.VOL).
        #[arg(long, conflicts_with = "nqn")]
        iqn: Option<String>,
        /// nvmf: subsystem NQN (default nqn.2026-11.io.plexd:CLUSTER-ID.DG.VOL).
        #[arg(long)]
        nqn: Option<String>,
        /// iscsi: ADDR:PORT to serve it on (with `--on` only; default: the node's
        /// iscsi_portal from the cluster file). nvmf exports use each node's
        /// nvmf_portal.
        #[arg(long, requires = "on")]
        portal: Option<String>,
        /// nvmf: a host NQN allowed to connect (repeatable; default: any host).
        #[arg(long = "host", value_name = "NQN")]
        hosts: Vec<String>,
    },
    /// Ends a volume's export on every node. Example: unexport iscsi dg1 vol1
    Unexport {
        /// Protocol: iscsi or nvmf.
        protocol: String,
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DiskCmd {
    /// Writes a label on a disk (file or block device). Example: disk init /dev/sdb --name d1
    Init {
        /// Disk path.
        path: String,
        /// Disk media name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Re-initialise a disk that already has a label (a free disk or a disk of a
        /// deported group; never a disk an imported group holds).
        #[arg(long)]
        force: bool,
    },
    /// Lists the disks on the cluster's disk paths.
    List,
}

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum DgCmd {
    /// Creates a disk group from initialised disks. Example: dg create dg1 d1 d2 --shared
    Create {
        /// Disk group name.
        dg: String,
        /// Disk media names.
        #[arg(required = true)]
        disks: Vec<String>,
        /// A shared (cluster) disk group; default private to the node.
        #[arg(long)]
        shared: bool,
    },
    /// Adds an initialised disk.
    AddDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// Removes a disk holding no subdisk.
    RmDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// Records a disk failed: its plexes become STALE, its log copies move to other
    /// disks, and no node needs to find it any more. For a disk gone for good; when
    /// the cluster cannot form because of it, give this command to the node that
    /// formed (it waits in that node's queue, and the other nodes join without the
    /// disk). Example: dg fail-disk dg1 d1
    FailDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// Also when a volume's only ACTIVE plexes are on the disk (that volume is
        /// then served on no node).
        #[arg(long)]
        force: bool,
    },
    /// A disk recorded failed is back: every node must find it again. The plexes
    /// its failure made STALE come back: a volume's last ACTIVE plex ACTIVE again
    /// (nothing wrote the volume since), the others SYNCING from an ACTIVE plex.
    /// Example: dg reattach-disk dg1 d1
    ReattachDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Moves every plex off a disk (to empty it before `dg rm-disk`, or to rebuild
    /// the plexes of a failed disk elsewhere): each gets a new plex of its layout on
    /// disks its volume does not use, copied from an ACTIVE plex, which replaces it
    /// once ACTIVE. Hosts keep using the volumes. Given again after an interruption,
    /// it moves only the plexes not moving yet. Example: dg evacuate dg1 d1 --wait
    Evacuate {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// The disks the replacements may use, e.g. --to d5,d6 (default: any disk
        /// of the group the volume does not use).
        #[arg(long, value_delimiter = ',', value_name = "DISK,...")]
        to: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Destroys the group and its volumes. Refused while a volume is exported
    /// (unexport first) or a host is logged in to one.
    Destroy {
        /// Disk group.
        dg: String,
        /// End the group's exports too (never while a host session is logged in);
        /// for a failed group: release its disks.
        #[arg(long)]
        force: bool,
    },
    /// Gives the group up (its configuration stays on its disks). Refused while a
    /// volume is exported (unexport first) or a host is logged in to one.
    Deport {
        /// Disk group.
        dg: String,
        /// End the group's exports too (never while a host session is logged in).
        #[arg(long)]
        force: bool,
    },
    /// Imports a deported group found on the disks.
    Import {
        /// Disk group.
        dg: String,
        /// Import as a shared group.
        #[arg(long)]
        shared: bool,
        /// Take over a group whose owner (another node, or another cluster) is down
        /// for good: its record still names that owner. Refused while the owner is a
        /// member of this cluster. The owner must not come back serving it: make
        /// sure it is powered off or cannot reach the disks. Mirrors it left open
        /// are recovered from its dirty region log before the group is served.
        #[arg(long)]
        clear_owner: bool,
    },
    /// Sets a disk group's settings. Example: dg set dg1 detach-policy=local
    ///
    /// detach-policy=global (default): a write that fails on one plex of a mirror
    /// detaches that plex on every node. detach-policy=local (shared groups only): the
    /// write fails on the node that could not write the plex; the plex is detached
    /// only once every node failed it.
    Set {
        /// Disk group.
        dg: String,
        /// KEY=VALUE; the one key is detach-policy (global | local).
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Lists the disk groups.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Layout {
    Concat,
    Stripe,
    Mirror,
    MirrorStripe,
}

/// `vol create --drl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Drl {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
pub(crate) enum VolCmd {
    /// Creates a volume. Example: vol create dg1 vol1 1G --layout mirror --mirrors 2
    Create {
        /// Disk group.
        dg: String,
        /// Volume name.
        vol: String,
        /// Size (K/M/G/T suffixes; rounded up to whole 512-byte sectors).
        size: String,
        /// Layout.
        #[arg(long, value_enum, default_value = "concat")]
        layout: Layout,
        /// Plexes of a mirror layout (default 2).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
        mirrors: Option<u32>,
        /// Columns of a stripe layout (default 2).
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
        columns: Option<u32>,
        /// Stripe unit (default 64K; a non-zero multiple of 4K).
        #[arg(long)]
        stripe_unit: Option<String>,
        /// Dirty region log of a mirrored volume: `on` (the default; a node crash
        /// then resyncs only the regions it was writing) or `off` (a full resync).
        #[arg(long, value_enum, default_value = "on")]
        drl: Drl,
        /// Region size of the dirty region log (default 512K; a power of two from
        /// 64K to 1G).
        #[arg(long)]
        region_size: Option<String>,
        /// The disks the plexes may use, e.g. --disks d1,d5 (a two-way mirror then
        /// has a plex on each: one per array); default: any disk of the group.
        #[arg(long, value_delimiter = ',', value_name = "DISK,...")]
        disks: Vec<String>,
    },
    /// Grows a volume to SIZE, or by SIZE with `+SIZE`. Example: vol grow dg1 vol1 +1G
    Grow {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// New size, or `+SIZE`.
        size: String,
    },
    /// Shrinks a volume to SIZE, or by SIZE with `-SIZE` (data beyond the new end is
    /// lost). Refused while a host is logged in to (or connected to) an export of the
    /// volume on any node, unless `--force`. Example: vol shrink dg1 vol1 -- -512M
    Shrink {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// New size, or `-SIZE`.
        #[arg(allow_hyphen_values = true)]
        size: String,
        /// Shrink also while hosts use the volume (they lose what they keep past the
        /// new end: shrink that first, e.g. the file system).
        #[arg(long)]
        force: bool,
    },
    /// Removes a volume.
    Rm {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
    /// Sets a volume's settings. Example: vol set dg1 vol1 read-policy=prefer:vol1-02
    ///
    /// read-policy: which ACTIVE plex of a mirror serves a read. round (the default):
    /// each in turn. least-busy: the one with the fewest reads outstanding, each plex
    /// serving a contiguous share of the volume while they are equally busy.
    /// prefer:PLEX: that plex while it is ACTIVE (a plex on the nearer or faster
    /// array), else the least busy.
    Set {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// KEY=VALUE; the one key is read-policy (round | least-busy | prefer:PLEX).
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Lists volumes.
    List {
        /// Only this disk group.
        dg: Option<String>,
    },
    /// The data-plane counters of a volume on the node plexctl talks to (I/O,
    /// latency, refusals, dirty region log writes and waits).
    Stats {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum PlexCmd {
    /// Adds an EMPTY plex to a volume (then `plex attach` it). Example: plex add dg1
    /// vol1 --disks d5 (a mirror on another array).
    Add {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// The disks the new plex may use, e.g. --disks d5,d6 (default: any disk of
        /// the group the volume does not use).
        #[arg(long, value_delimiter = ',', value_name = "DISK,...")]
        disks: Vec<String>,
    },
    /// Detaches a plex (STALE).
    Detach {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
    },
    /// Attaches a STALE or EMPTY plex: resync (see `task list`), then ACTIVE.
    Attach {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Removes a plex (an ACTIVE one only with `--force`; never the last ACTIVE one).
    Rm {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
        /// Remove an ACTIVE plex (the volume loses a copy of its data).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCmd {
    /// Nodes, roles, states, view, master, last failure reasons.
    Status,
    /// The configured nodes.
    Nodes,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TaskCmd {
    /// Lists tasks with progress.
    List,
    /// Waits until resyncs end, showing their progress: those of every plex of the
    /// scope that is SYNCING now, or of the plex named with `--plex`. Exit status 0
    /// when each plex is ACTIVE, 6 when one is not (detached, removed, its copy
    /// failed), 4 when `--max-wait` runs out first. Example: task wait dg1 vol1
    Wait {
        /// Only this disk group.
        dg: Option<String>,
        /// Only this volume of the disk group.
        vol: Option<String>,
        /// Only this plex of the disk group, whatever its state now.
        #[arg(long, requires = "dg")]
        plex: Option<String>,
        /// Give up waiting after SECS seconds (the copies go on).
        #[arg(long, value_name = "SECS")]
        max_wait: Option<u64>,
    },
}

/// `--wait` of the commands that start resyncs.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct WaitArgs {
    /// Wait until the resyncs the command starts end, showing their progress (as
    /// `task wait`); exit status 6 when a plex does not become ACTIVE.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With `--wait`: give up waiting after SECS seconds (exit status 4; the copies
    /// go on).
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub(crate) max_wait: Option<u64>,
}
