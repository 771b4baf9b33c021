@0x8a33fae244616b45;
# The disk group configuration as stored in the private region's slots.
#
# A slot's payload is one Cap'n Proto message (standard framing, unpacked) whose root
# is DiskGroupConfig. The slot header (docs/ONDISK.md) carries the sequence number,
# transaction id, length and CRC32C; this schema carries the objects.
#
# Compatibility: fields are only ever added (new ordinals), never renamed in meaning,
# retyped or removed; `formatVersion` is bumped when a reader must refuse a
# configuration it would misunderstand (see docs/ONDISK.md, "Versioning").
# Every offset and length is in bytes.

struct DiskGroupConfig {
  formatVersion @0 :UInt32;     # 1
  name @1 :Text;                # disk group name, e.g. "dg1"
  id @2 :Text;                  # disk group id (32 hex digits)
  shared @3 :Bool;
  ownerId @4 :Text;             # cluster id (shared) or host id (private); "" = deported
  seq @5 :UInt64;               # configuration sequence number
  disks @6 :List(Disk);
  volumes @7 :List(Volume);
  openNodes @8 :List(OpenNode); # shared: nodes that may have left mirrors divergent (added
                                # later in format 1; absent = none; docs/ONDISK.md)
  detachPolicy @9 :DetachPolicy; # added later in format 1; absent = global
}

# What a write that fails on one plex of a mirror and reaches another does
# (docs/OPERATIONS.md, "Plex I/O errors").
enum DetachPolicy {
  global @0;                    # hold it, detach the plex cluster-wide (STALE)
  local @1;                     # fail it on that node; detach once every node failed it
}

# A node whose data plane may write the group's shared mirrored volumes and that has
# not stopped cleanly since it joined: if it is lost, its mirrors are recovered.
struct OpenNode {
  node @0 :UInt32;              # node id (cluster file)
  incarnation @1 :UInt64;       # the node's start that joined
}

struct Disk {
  name @0 :Text;                # disk media name, e.g. "disk01"
  id @1 :Text;                  # disk id from the label
  path @2 :Text;                # device path on the node that added it
  sizeBytes @3 :UInt64;
  publicOffsetBytes @4 :UInt64;
  publicLenBytes @5 :UInt64;
  failed @6 :Bool;              # recorded failed (`plexctl dg fail-disk`): no node needs
                                # to find it, nothing is allocated or written on it, and
                                # its plexes are STALE (docs/OPERATIONS.md)
  staled @7 :List(StaledPlex);  # while failed: the plexes on it that the failure made
                                # STALE (what `plexctl dg reattach-disk` brings back)
}

# A plex that `dg fail-disk` made STALE (it took writes: ACTIVE or SYNCING).
struct StaledPlex {
  plex @0 :Text;
  lastActive @1 :Bool;          # it was ACTIVE and the failure left its volume without
                                # an ACTIVE plex: the volume was served nowhere since, so
                                # the plex still holds its data (made ACTIVE again)
}

enum VolumeState {
  enabled @0;
  disabled @1;
}

struct ReadPolicy {
  union {
    round @0 :Void;
    prefer @1 :Text;            # the preferred plex's name
    leastBusy @2 :Void;  # was leastOutstanding (renamed; same wire format)
  }
}

struct Volume {
  name @0 :Text;
  sizeBytes @1 :UInt64;
  state @2 :VolumeState;
  readPolicy @3 :ReadPolicy;
  plexes @4 :List(Plex);
  exports @5 :List(Export);     # added after format 1's first release; absent = none
  reservations @6 :Reservations;  # SCSI persistent reservations of a shared volume;
                                  # added later in format 1; absent = none
  log @7 :VolumeLog;            # dirty region log (added later in format 1); absent = none
}

# A mirrored volume's dirty region log (docs/ONDISK.md, "Dirty region log"): one or
# two copies, each a log subdisk (on a disk of its own) holding one section per node;
# node n's section of a copy starts at the copy's diskOffsetBytes + n * sectionBytes.
# The first copy is disk/diskOffsetBytes, the others moreCopies (a record without
# moreCopies, as older plexd wrote, has one copy).
struct VolumeLog {
  disk @0 :Text;                # disk media name holding the (first copy's) log subdisk
  diskOffsetBytes @1 :UInt64;   # from the start of the device
  lenBytes @2 :UInt64;          # each copy's whole log subdisk
  sectionBytes @3 :UInt64;      # one node's section (4096-byte multiple)
  regionBytes @4 :UInt64;       # power of two, 64 KiB .. 1 GiB
  logId @5 :UInt64;             # a new id whenever the log moves or its geometry changes
  moreCopies @6 :List(LogCopy); # the other copies (at most MAX_LOG_COPIES - 1 = 1)
}

# One more copy of a dirty region log, laid out as the first.
struct LogCopy {
  disk @0 :Text;                # disk media name
  diskOffsetBytes @1 :UInt64;   # from the start of the device
}

# A volume's SCSI persistent reservations (SPC-4 5.13), kept by the cluster for a shared
# volume and changed by hosts' PERSISTENT RESERVE OUT through any node (docs/ISCSI.md).
struct Reservations {
  generation @0 :UInt32;        # PRgeneration
  aptpl @1 :Bool;               # activate persist through power loss, as last registered
  registrations @2 :List(PrRegistration);
  reserved @3 :Bool;            # a reservation is held: the three fields below are set
  holder @4 :Text;              # holder's initiator port "iqn,i,0x<ISID>"
  holderPort @5 :UInt16;        # holder's relative target port (the node id)
  type @6 :UInt8;               # SPC-4 type code: 1, 3, 5, 6, 7 or 8
  lastChange @7 :PrChange;      # the PERSISTENT RESERVE OUT that made this state (absent:
                                # none recorded); a node applying the state does what the
                                # issuing node did (a preempt and abort's aborts, notices)
}

struct PrChange {
  initiator @0 :Text;           # the nexus (or NVMe host) that sent it
  relativePort @1 :UInt16;
  serviceAction @2 :UInt8;      # 5: PREEMPT AND ABORT
  scopeType @3 :UInt8;
}

struct PrRegistration {
  initiator @0 :Text;           # initiator port "iqn,i,0x<ISID>"
  relativePort @1 :UInt16;      # the target port (node id) it registered through
  key @2 :UInt64;               # reservation key
}

struct Export {
  protocol @0 :Text;            # "iscsi" or "nvmf"; a reader refuses a protocol it does not know
  iqn @1 :Text;                 # the target name (iscsi: IQN, nvmf: subsystem NQN), unique in the cluster
  nodes @2 :List(Text);         # node names serving it; empty = every node
  portal @3 :Text;              # "address:port"; empty = each node's own portal (always empty for nvmf)
  hosts @4 :List(Text);         # nvmf: host NQNs allowed; empty/absent = any host (added later, additive)
}

enum PlexState {
  active @0;
  stale @1;
  syncing @2;
  empty @3;
}

struct PlexLayout {
  union {
    concat @0 :Void;
    stripe :group {
      columns @1 :UInt32;
      stripeUnitBytes @2 :UInt64;
    }
  }
}

struct Plex {
  name @0 :Text;
  state @1 :PlexState;
  layout @2 :PlexLayout;
  subdisks @3 :List(Subdisk);
  resyncRanges @4 :List(ByteRange);  # a SYNCING plex: only these ranges need copying
                                     # (a node's dirty regions); empty = the whole plex
  replaces @5 :Text;                 # `dg evacuate`: the plex of the same volume this
                                     # one replaces; the change that makes this one
                                     # ACTIVE removes it. Empty = none
}

struct ByteRange {
  offsetBytes @0 :UInt64;
  lenBytes @1 :UInt64;
}

struct Subdisk {
  name @0 :Text;
  disk @1 :Text;                # disk media name
  diskOffsetBytes @2 :UInt64;   # from the start of the device
  lenBytes @3 :UInt64;
  column @4 :UInt32;            # 0 for concat plexes
  plexOffsetBytes @5 :UInt64;   # within the plex (concat) or the column (stripe)
}

# A change log record's payload (docs/ONDISK.md, "Change log"): the disk group's
# configuration after one change, as the one before it plus what changed. Every
# field of `group` but `volumes` is the new configuration's (`volumes` is empty);
# the new volume list is `volumes`, in order: runs of volumes kept unchanged from
# the configuration before, and volumes written out (new or changed).
struct ConfigDelta {
  formatVersion @0 :UInt32;     # 1, as DiskGroupConfig's
  group @1 :DiskGroupConfig;
  volumes @2 :List(VolumeRun);
}

struct VolumeRun {
  union {
    kept :group {               # the volumes before[start .. start + count]
      start @0 :UInt32;
      count @1 :UInt32;
    }
    volume @2 :Volume;          # a volume as it is after the change
  }
}
