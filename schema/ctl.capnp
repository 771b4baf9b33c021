@0xa3d6f7923aac395a;
# The ctl API: plexctl and Cap'n Proto RPC clients -> any plexd node.
#
# Served on the node's `address` from the cluster file (TCP). The bootstrap
# capability is a `Ctl` (the cluster protocol's `Peer` extends it, so one port serves
# both). Failures travel as data: `error` is empty on success, otherwise one line
# naming the node and the object (`node b: disk group dg1 exists as a private disk group`).
# Since the typed errors, every failed call also sets `failure` (a `CtlError`: the kind,
# the node, the object and the same line); `error` stays for older clients.
# Versioning: fields are only ever added, never renumbered.

using Disk = import "ondisk.capnp";

# What kind of failure a call met: what a client can do about it. Every kind but
# `outcomeUnknown` means nothing changed. plexctl exits with a status per kind
# (docs/OPERATIONS.md, "Exit status").
enum ErrorKind {
  internal @0;        # a malformed message or answer, a bug (also: a kind this client does not know)
  refused @1;         # invalid, or conflicts with the configuration
  inUse @2;           # an object the change needs or removes is in use (exported, a host logged in)
  notFound @3;        # a named object does not exist
  exists @4;          # the name or the disk is taken
  usage @5;           # the command line is wrong (plexctl's own; never sent by a node)
  unreachable @6;     # a node or the master did not answer (cannot connect, timeout)
  noQuorum @7;        # this side of the cluster has no majority of the votes
  notMaster @8;       # no master can take the change now (lost, taking over, not a member)
  busy @9;            # too many requests waiting, or the node is stopping
  outcomeUnknown @10; # the cluster may or may not have applied the change
  failed @11;         # a node could not carry it out (data plane, disks, a node left)
}

struct CtlError {
  kind @0 :ErrorKind;
  node @1 :Text;      # the node that refused or failed (the answering node when no other)
  object @2 :Text;    # the object the call was about (`volume vol1 in disk group dg1`), empty if none
  message @3 :Text;   # one line naming the node and the object: the same text as `error`
}

enum Layout {
  concat @0;
  stripe @1;
  mirror @2;
  mirrorStripe @3;
}

struct DgCreate {
  dg @0 :Text;
  disks @1 :List(Text);   # disk media names (from `disk init`), found on the node's disk_paths
  shared @2 :Bool;
}

struct DgDisk {
  dg @0 :Text;
  disk @1 :Text;
}

struct DgImport {
  dg @0 :Text;
  shared @1 :Bool;
  # Import a group another node or cluster still owns on its disks (that owner is
  # down for good): `dg import --clear-owner`.
  clearOwner @2 :Bool;
}

struct VolCreate {
  dg @0 :Text;
  volume @1 :Text;
  sizeBytes @2 :UInt64;
  layout @3 :Layout;
  mirrors @4 :UInt32;          # 0 = default (2 for mirror layouts)
  columns @5 :UInt32;          # 0 = default (2 for stripe layouts)
  stripeUnitBytes @6 :UInt64;  # 0 = default (64 KiB)
  drlOff @7 :Bool;             # --drl off: a mirrored volume without a dirty region log
  regionBytes @8 :UInt64;      # --region-size: the log's region size; 0 = default (512 KiB)
}

struct VolResize {
  dg @0 :Text;
  volume @1 :Text;
  newSizeBytes @2 :UInt64;
  relative @3 :Bool;           # newSizeBytes is a change: grow by (volGrow), shrink by (volShrink)
}

struct DgVol {
  dg @0 :Text;
  volume @1 :Text;
}

struct DgPlex {
  dg @0 :Text;
  plex @1 :Text;
}

# `export PROTOCOL DG VOL`: hosts reach the volume over `protocol` ("iscsi" or "nvmf").
struct VolExport {
  dg @0 :Text;
  volume @1 :Text;
  protocol @2 :Text;
  iqn @3 :Text;                # the target name: IQN (iscsi) or subsystem NQN (nvmf); empty =
                               # iqn.2026-11.io.plexd:<cluster>.<dg>.<volume> /
                               # nqn.2026-11.io.plexd:<cluster id>.<dg>.<volume>
  nodes @4 :List(Text);        # empty = every node (--all)
  portal @5 :Text;             # iscsi: empty = each node's iscsi_portal; needs exactly one node
  hosts @6 :List(Text);        # nvmf: host NQNs allowed to connect; empty = any host
}

struct VolUnexport {
  dg @0 :Text;
  volume @1 :Text;
  protocol @2 :Text;
}

# `dg set DG KEY=VALUE`: a disk group's settings.
struct DgSet {
  dg @0 :Text;
  detachPolicy @1 :Text;       # "global" | "local" (docs/OPERATIONS.md, "Plex I/O errors")
}

# `vol set DG VOL KEY=VALUE`: a volume's settings.
struct VolSet {
  dg @0 :Text;
  volume @1 :Text;
  readPolicy @2 :Text;         # "round" | "least-busy" | "prefer:PLEX" (docs/OPERATIONS.md, "Read policy")
}

# One configuration change; mirrors the coordinator's objects::Change, carrying the
# fields of each plexctl command.
struct Change {
  union {
    dgCreate @0 :DgCreate;
    dgAddDisk @1 :DgDisk;
    dgRmDisk @2 :DgDisk;
    dgDestroy @3 :Text;
    dgDeport @4 :Text;
    dgImport @5 :DgImport;
    volCreate @6 :VolCreate;
    volGrow @7 :VolResize;
    volShrink @8 :VolResize;
    volRm @9 :DgVol;
    plexAdd @10 :DgVol;
    plexDetach @11 :DgPlex;
    plexAttach @12 :DgPlex;
    plexRm @13 :DgPlex;
    volExport @14 :VolExport;
    volUnexport @15 :VolUnexport;
    dgSet @17 :DgSet;
    dgFailDisk @18 :DgDisk;    # record a disk failed (docs/OPERATIONS.md, "A disk that is gone for good")
    dgReattachDisk @19 :DgDisk; # a disk recorded failed is back (docs/OPERATIONS.md, "A failed disk that comes back")
    dgEvacuate @20 :DgDisk;    # move every plex off a disk (docs/OPERATIONS.md, "Moving data off a disk")
    volSet @22 :VolSet;        # a volume's read policy
  }
  # `--force` of dgDestroy and dgDeport (end the group's exports; never while a host
  # session is logged in), of plexRm (remove an ACTIVE plex), of volShrink (also
  # while hosts use the volume) and of dgFailDisk (also when a volume's only ACTIVE
  # plexes are on the disk). Ignored by others.
  force @16 :Bool;
  # The disks new plexes may use: `vol create --disks`, `plex add --disks` and `dg
  # evacuate --to` (empty = any disk of the group). Ignored by others.
  disks @21 :List(Text);
}

struct NodeStatus {
  id @0 :UInt32;
  name @1 :Text;
  role @2 :Text;     # master | slave | joining | discovering | forming | abandoned | taking-over | stopped | down
  state @3 :Text;    # up | down
  reason @4 :Text;   # last failure reason, empty if none
  address @5 :Text;
}

struct ClusterStatus {
  node @0 :Text;     # the node that answered
  master @1 :Text;   # empty if none
  view @2 :UInt64;   # 0 if not a member
  nodes @3 :List(NodeStatus);
  # Disk groups of this cluster (or private to the answering node) whose
  # configuration cannot be read from any of their disks: "dg1: <reason>".
  failedGroups @4 :List(Text);
  # The quorum disk as the answering node sees it: "quorum disk: held by a",
  # "quorum disk: not held (last written by b)"; empty when none is configured.
  quorumDisk @5 :Text;
}

struct DiskInfo {
  name @0 :Text;
  path @1 :Text;
  sizeBytes @2 :UInt64;
  dg @3 :Text;       # empty if in no disk group
  state @4 :Text;    # online | free | deported | failed: <reason> | error: <reason>
                     # (a disk `dg fail-disk` recorded failed: "failed: recorded failed ...")
  id @5 :Text;
  repairs @6 :UInt64; # label or configuration copies this node repaired on it since it started
}

struct Task {
  id @0 :UInt64;
  kind @1 :Text;     # resync
  dg @2 :Text;
  volume @3 :Text;
  plex @4 :Text;
  doneBytes @5 :UInt64;
  totalBytes @6 :UInt64;  # a resync: the sum of the plex's ranges still to copy when it has
                          # some (a crashed node's dirty regions), else the volume's size
  state @7 :Text;    # running | done | stopped: <why> (no error of its own) | failed: <reason>
  node @8 :Text;
  bytesPerSecond @9 :UInt64;  # copied per second since the node running it saw it start; 0 = none yet
  etaSeconds @10 :UInt64;     # seconds left at that rate; 0 = done or no rate yet
}

# `print`'s answer: the configuration as the answering node holds it, each disk
# group in its on-disk encoding (ondisk.capnp), and the disk groups whose
# configuration it cannot read. plexctl renders its text tree and its --json
# document from these (plexd-proto's `print` module; docs/OPERATIONS.md shows the
# JSON shape).
struct PrintedConfig {
  diskGroups @0 :List(Disk.DiskGroupConfig);
  failedGroups @1 :List(FailedGroup);
}

# A disk group found on disks whose configuration cannot be read from any of them.
struct FailedGroup {
  name @0 :Text;     # from the labels
  id @1 :Text;
  shared @2 :Bool;
  reason @3 :Text;   # why no configuration could be read
  disks @4 :List(FailedDisk);
}

struct FailedDisk {
  name @0 :Text;     # disk media name, from the label
  path @1 :Text;     # its path on the answering node
}

interface Ctl {
  # Runs a configuration change (on the master; a slave forwards it). `done` says
  # what was done (object, size, placement, adjustments) when `error` is empty.
  change @0 (change :Change) -> (error :Text, done :Text, failure :CtlError);
  clusterStatus @1 () -> (status :ClusterStatus, error :Text, failure :CtlError);
  # The configuration (`config`). `dg` empty = every disk group. `json` and `text`
  # are the same rendered as plexctl's --json document and text tree, for a plexctl
  # older than `config`, left empty when `configOnly` is set: a client that renders
  # `config` itself sets it (they will go).
  print @2 (dg :Text, configOnly :Bool) -> (json :Text, text :Text, error :Text,
                                            failure :CtlError, config :PrintedConfig);
  # Writes a label (`disk init`). `name` empty = the file name without extension.
  diskInit @3 (path :Text, name :Text, force :Bool) -> (disk :DiskInfo, error :Text, failure :CtlError);
  diskList @4 () -> (disks :List(DiskInfo), error :Text, failure :CtlError);
  taskList @5 () -> (tasks :List(Task), error :Text, failure :CtlError);
  # `vol stats`: the answering node's data-plane counters of one volume, as JSON
  # (plexd-target's VolumeInfo: state, plexes, in-flight, parked and held I/O, stats).
  volStats @6 (dg :Text, volume :Text) -> (json :Text, error :Text, failure :CtlError);
}
