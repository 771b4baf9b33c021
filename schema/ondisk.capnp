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
}

struct Disk {
  name @0 :Text;                # disk media name, e.g. "disk01"
  id @1 :Text;                  # disk id from the label
  path @2 :Text;                # device path on the node that added it
  sizeBytes @3 :UInt64;
  publicOffsetBytes @4 :UInt64;
  publicLenBytes @5 :UInt64;
}

enum VolumeState {
  enabled @0;
  disabled @1;
}

struct ReadPolicy {
  union {
    round @0 :Void;
    prefer @1 :Text;            # the preferred plex's name
    leastOutstanding @2 :Void;
  }
}

struct Volume {
  name @0 :Text;
  sizeBytes @1 :UInt64;
  state @2 :VolumeState;
  readPolicy @3 :ReadPolicy;
  plexes @4 :List(Plex);
  exports @5 :List(Export);     # added after format 1's first release; absent = none
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
}

struct Subdisk {
  name @0 :Text;
  disk @1 :Text;                # disk media name
  diskOffsetBytes @2 :UInt64;   # from the start of the device
  lenBytes @3 :UInt64;
  column @4 :UInt32;            # 0 for concat plexes
  plexOffsetBytes @5 :UInt64;   # within the plex (concat) or the column (stripe)
}
