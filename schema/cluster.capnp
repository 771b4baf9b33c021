@0x85c21f2ae4bde6cd;
# The cluster protocol between plexd coordinators (membership, transactions).
#
# Each node serves one TCP address: plexctl's Cap'n Proto RPC (the bootstrap
# capability is a `Peer`, which extends the public `Ctl` interface) and the peer
# streams share the port. A node opens one connection to every other configured node
# as a peer stream (coordinator/src/daemon/peer_stream.rs, docs/PROTOCOL.md): 8 bytes
# `PLXDPEER`, a handshake (`Peer.hello`'s parameters as one message, answered by its
# results as one message), then each protocol message, in order and one way, as a
# Cap'n Proto message whose root is a `Message` struct (the core's `Message`,
# coordinator/src/core/codec.rs); the configurations and changes inside it are Cap'n
# Proto messages of their own (`SharedConfig`, `ConfigChange` below, for plexd's
# model; the core does not look inside them).
#
# Versioning and evolution (docs/PROTOCOL.md, "Messages"):
# - Fields, message kinds and structs are only ever added, with new ordinals; never
#   renumbered, retyped or removed (a name may change, its meaning may not).
# - An absent field reads as its default (0, false, empty, the union's first member,
#   a null pointer), so a new field's default must mean what an older node does:
#   optional values are a union whose first member is `none`, or a null pointer.
# - A message kind (a member of `Message`'s union) an older node does not know is
#   dropped there with a log line, like a lost message: a new kind must be one whose
#   loss the protocol tolerates, or come with a new protocol version.
# - `PROTOCOL_VERSION` (coordinator/src/core/codec.rs) is bumped when a node must
#   not talk to an older one (a change the rules above cannot express). Nodes of
#   different protocol versions refuse each other at the handshake, and a `Message` whose
#   `version` is not this node's is refused by the decoder. Version 1 is the first
#   Cap'n Proto version; version 0 (an absent field) is the JSON protocol before it,
#   which a version-1 node refuses at `hello`.

using Ctl = import "ctl.capnp";
using Disk = import "ondisk.capnp";

interface Peer extends(Ctl.Ctl) {
  # Retired: the JSON message body of protocol version 0. A version-1 node does
  # not implement it (the call fails; no version-0 node passes `hello` anyway).
  deliverJson @0 (from :UInt32, incarnation :UInt64, message :Data) -> ();

  # Retired in protocol version 3 (messages travel on the peer stream); a node
  # answers every call with an error. Was: one protocol message from node `from`
  # (its incarnation), after a successful `hello` on the connection.
  deliver @3 (from :UInt32, incarnation :UInt64, message :Message) -> ();

  # Retired: resync fences now travel as `deliver` messages (Message.fence...).
  # A node answers every call with an error. Was: `hold` quiesces `volume` (a
  # volume bdev, DG.VOL) on this node's data plane for the copy `token` of node
  # `from`, which must be this node's master; this node must have applied
  # transaction minTxnView.minTxnN. A release (`hold` false) resumes it and answers
  # `intact` = the fence held from the hold until now. `error` empty = done.
  fence @1 (from :UInt32, volume :Text, hold :Bool, token :UInt64,
            minTxnView :UInt64, minTxnN :UInt64) -> (error :Text, intact :Bool);

  # The handshake: node `from` says which cluster it belongs to (the cluster file's
  # `id`), the node list it was started with (`id=name@address` per node in id
  # order, comma-separated) and the protocol version it speaks; the callee answers
  # with its own, and `error` is non-empty when they differ (the callee logs both
  # nodes and the differing value); the caller compares the answer the same way, so
  # a callee too old to know `protocolVersion` (it answers 0) is refused too. Since
  # protocol version 3 a peer stream carries these parameters and results as its
  # first two messages; a call is made only by a node of an older release, and is
  # answered (with its refusal).
  hello @2 (from :UInt32, clusterId :Text, nodeList :Text, protocolVersion :UInt32)
        -> (error :Text, clusterId :Text, nodeList :Text, protocolVersion :UInt32);
}

# ---- The core's messages (coordinator/src/core/messages.rs) ----

# A transaction id: the view the master started it in and a counter in that view.
struct TxnId {
  view @0 :UInt64;
  n @1 :UInt64;
}

# A heartbeat stamp sent back to the node that made it.
struct Echo {
  incarnation @0 :UInt64;
  stampMs @1 :UInt64;
}

# Where a master's transactions stand.
struct TxnState {
  committed @0 :TxnId;
  seq @1 :UInt64;
  running @2 :TxnId;          # null = none running
}

# A numbered membership.
struct View {
  id @0 :UInt64;
  master @1 :UInt32;
  members @2 :List(UInt32);   # sorted ascending, master included
  incarnations @3 :List(UInt64); # one per member, same order
}

# Ok, or why not (one line).
struct Answer {
  union {
    ok @0 :Void;
    err @1 :Text;
  }
}

struct Heartbeat {
  incarnation @0 :UInt64;
  viewId @1 :UInt64;
  master :union {
    none @2 :Void;
    node @3 :UInt32;
  }
  member @4 :Bool;
  stampMs @5 :UInt64;
  echo @6 :Echo;              # null = none
  leaseLeftMs @7 :UInt64;
  maxView @8 :UInt64;
  memberAgoMs :union {
    never @9 :Void;
    ms @10 :UInt64;
  }
  txns @11 :TxnState;         # null = none
  leased @12 :Bool;
  heard @13 :Echo;            # null = none
  diskVote @14 :Bool;         # the sender counts the quorum disk's vote
  applied @15 :TxnId;         # slave to its master: newest txn its data plane applied; null = none
}

# A request as it travels from a slave to the master.
struct WireRequest {
  union {
    change @0 :Data;          # the model's encoding of a change (plexd: ConfigChange)
    detachPlex :group {
      volume @1 :Text;
      plex @2 :Text;
      ranges @3 :List(Disk.ByteRange);  # failed writes (local detach policy); added later
    }
  }
}

struct Forward {
  request @0 :UInt64;
  body @1 :WireRequest;
}

struct Outcome {
  request @0 :UInt64;
  result @1 :Answer;
  kind :union {
    none @2 :Void;
    kind @3 :Ctl.ErrorKind;   # `usage` is never sent
  }
  node @4 :Text;              # null = not named
}

struct Check {
  txn @0 :TxnId;
  change @1 :Data;            # the model's encoding of the change (plexd: ConfigChange)
  originNode @2 :UInt32;
  originRequest @3 :UInt64;
  base @4 :TxnState;          # null = none
}

struct CheckReply {
  txn @0 :TxnId;
  result @1 :Answer;
  kind :union {
    none @2 :Void;
    kind @3 :Ctl.ErrorKind;
  }
}

struct Prepare { txn @0 :TxnId; }

struct PrepareReply {
  txn @0 :TxnId;
  result @1 :Answer;
}

struct Commit { txn @0 :TxnId; }

struct CommitAck { txn @0 :TxnId; }

struct Abort { txn @0 :TxnId; }

# Slave -> master: its data plane applied the COMMIT of `txn` (coordinator/src/core/txn.rs,
# "answer after applied"). An older master drops it; an older slave never sends it and
# a master waiting for it answers at its bound (APPLIED_WAIT_MS).
struct Applied { txn @0 :TxnId; }

struct JoinRequest { incarnation @0 :UInt64; }

struct JoinOffer {
  join @0 :UInt64;
  config @1 :Data;            # the model's encoding of the configuration (plexd: SharedConfig)
  configTxn @2 :TxnId;
  disks @3 :List(Text);
}

struct JoinReady { join @0 :UInt64; }

struct JoinAbandon {
  join @0 :UInt64;
  reason @1 :Text;
}

struct TakeoverQuery {
  master @0 :UInt32;
  incarnation @1 :UInt64;
}

struct TakeoverInfo {
  view @0 :View;              # null = not a member
  granted @1 :Bool;
  masterSilentMs :union {
    never @2 :Void;
    ms @3 :UInt64;
  }
  voteKept @4 :Bool;
}

struct NodeReason {
  node @0 :UInt32;
  reason @1 :Text;
}

struct InstallView {
  view @0 :View;
  configSeq @1 :UInt64;
  lastTxn @2 :TxnId;
  reasons @3 :List(NodeReason);
}

# Every message between coordinators; the meaning of each kind and field is in
# coordinator/src/core/messages.rs.
struct Message {
  version @0 :UInt32;         # PROTOCOL_VERSION of the sender (1)
  union {
    heartbeat @1 :Heartbeat;
    forward @2 :Forward;
    outcome @3 :Outcome;
    check @4 :Check;
    checkReply @5 :CheckReply;
    prepare @6 :Prepare;
    prepareReply @7 :PrepareReply;
    commit @8 :Commit;
    commitAck @9 :CommitAck;
    abort @10 :Abort;
    joinRequest @11 :JoinRequest;
    joinOffer @12 :JoinOffer;
    joinReady @13 :JoinReady;
    joinAbandon @14 :JoinAbandon;
    takeoverQuery @15 :TakeoverQuery;
    takeoverInfo @16 :TakeoverInfo;
    view @17 :InstallView;
    fence @18 :Fence;
    fenceReply @19 :FenceReply;
    release @20 :Release;
    releaseReply @21 :ReleaseReply;
    applied @22 :Applied;
  }
}

# Resync fences (coordinator/src/core/resync.rs, docs/PROTOCOL.md "Resync fences").
# An older node drops these kinds: its master's copy is never fenced there and
# the resync waits (it is retried), which the protocol tolerates.
struct FenceToken {
  view @0 :UInt64;            # view id of the master that asked
  n @1 :UInt64;               # that master's fence counter
}

struct Fence {
  token @0 :FenceToken;
  dg @1 :Text;
  volume @2 :Text;
  plex @3 :Text;              # the SYNCING plex the copy is for
}

struct FenceReply {
  token @0 :FenceToken;
  result @1 :Answer;
}

struct Release { token @0 :FenceToken; }

struct ReleaseReply {
  token @0 :FenceToken;
  intact @1 :Bool;            # the fence held from its hold until the release
}

# ---- plexd's configuration model (coordinator/src/daemon/model.rs) ----
# Each travels as its own Cap'n Proto message (standard framing, unpacked) in the
# `Data` fields above. Disk groups reuse the on-disk encoding (ondisk.capnp).

# The cluster-wide configuration: every shared disk group.
struct SharedConfig {
  seq @0 :UInt64;
  groups @1 :List(Disk.DiskGroupConfig);
  updates @2 :List(DiskUpdate);   # what the commit that produced it writes to disks
  openNodes @3 :List(OpenNodeStart); # open node starts (node-crash recovery), sorted;
                                     # every shared group records a copy
}

struct DiskUpdate {
  union {
    writeConfig @0 :Disk.DiskGroupConfig;
    release @1 :Disk.Disk;
  }
}

struct VolumeLayout {
  union {
    concat @0 :Void;
    stripe :group {
      columns @1 :UInt32;
      stripeUnitBytes @2 :UInt64;
    }
    mirror :group {
      mirrors @3 :UInt32;
    }
    mirrorStripe :group {
      mirrors @4 :UInt32;
      columns @5 :UInt32;
      stripeUnitBytes @6 :UInt64;
    }
  }
}

# One configuration change (objects::Change); names are disk group, volume, plex
# and disk media names; sizes in bytes.
struct ConfigChange {
  union {
    dgCreate :group {
      dg @0 :Text;
      dgId @1 :Text;
      shared @2 :Bool;
      ownerId @3 :Text;
      disks @4 :List(Disk.Disk);
    }
    dgAddDisk :group {
      dg @5 :Text;
      disk @6 :Disk.Disk;
    }
    dgRmDisk :group {
      dg @7 :Text;
      disk @8 :Text;
    }
    dgDestroy :group {
      dg @9 :Text;
      force @10 :Bool;
    }
    dgDeport :group {
      dg @11 :Text;
      force @12 :Bool;
    }
    dgImport :group {
      config @13 :Disk.DiskGroupConfig;
      shared @14 :Bool;
      ownerId @15 :Text;
    }
    volCreate :group {
      dg @16 :Text;
      volume @17 :Text;
      sizeBytes @18 :UInt64;
      layout @19 :VolumeLayout;
      drlOff @60 :Bool;         # --drl off: no dirty region log
      regionBytes @61 :UInt64;  # the log's region size (0: the default, 512 KiB)
      disks @77 :List(Text);    # --disks: the disks the plexes may use; empty = any
    }
    volGrow :group {
      dg @20 :Text;
      volume @21 :Text;
      newSizeBytes @22 :UInt64;
    }
    volShrink :group {
      dg @23 :Text;
      volume @24 :Text;
      newSizeBytes @25 :UInt64;
      force @67 :Bool;          # --force: also while hosts use the volume
    }
    volSetReadPolicy :group {
      dg @26 :Text;
      volume @27 :Text;
      policy @28 :Disk.ReadPolicy;
    }
    volRm :group {
      dg @29 :Text;
      volume @30 :Text;
    }
    plexAdd :group {
      dg @31 :Text;
      volume @32 :Text;
      layout @33 :Disk.PlexLayout;
      disks @75 :List(Text);    # --disks: the disks the new plex may use; empty = any
    }
    plexDetach :group {
      dg @34 :Text;
      plex @35 :Text;
    }
    plexAttach :group {
      dg @36 :Text;
      plex @37 :Text;
    }
    plexRm :group {
      dg @38 :Text;
      plex @39 :Text;
      force @40 :Bool;
    }
    setPlexState :group {
      dg @41 :Text;
      plex @42 :Text;
      state @43 :Disk.PlexState;
    }
    volExport :group {
      dg @44 :Text;
      volume @45 :Text;
      export @46 :Disk.Export;
    }
    volUnexport :group {
      dg @47 :Text;
      volume @48 :Text;
      protocol @49 :Text;     # "iscsi"
    }
    volPrOut :group {         # a host's PERSISTENT RESERVE OUT on a shared volume
      dg @50 :Text;
      volume @51 :Text;
      initiator @52 :Text;    # the I_T nexus: initiator port...
      targetPort @53 :UInt16; # ...and relative target port
      serviceAction @54 :UInt8;
      scopeType @55 :UInt8;
      parameters @56 :Data;
    }
    nodeOpen @57 :OpenNodeStart;    # node bookkeeping of every shared group
    nodeClose @58 :OpenNodeStart;   # (docs/PROTOCOL.md, "Node-crash recovery")
    nodeRecover @59 :OpenNodeStart;
    dgSetDetachPolicy :group {  # `plexctl dg set DG detach-policy=...`
      dg @62 :Text;
      policy @63 :Disk.DetachPolicy;
    }
    plexDiverged :group {       # local detach policy: a write failed on the plex on a node
      dg @64 :Text;
      plex @65 :Text;
      ranges @66 :List(Disk.ByteRange);
    }
    dgFailDisk :group {         # `plexctl dg fail-disk DG DISK [--force]`
      dg @68 :Text;
      disk @69 :Text;
      force @70 :Bool;          # also when a volume's only ACTIVE plexes are on it
    }
    dgReattachDisk :group {     # `plexctl dg reattach-disk DG DISK`
      dg @71 :Text;
      disk @72 :Disk.Disk;      # the group's record of the disk (every node finds it by id)
    }
    dgEvacuate :group {         # `plexctl dg evacuate DG DISK [--to DISK,...]`
      dg @73 :Text;
      disk @74 :Text;
      to @76 :List(Text);       # the disks the replacements may use; empty = any
    }
  }
}

struct OpenNodeStart {
  node @0 :UInt32;
  incarnation @1 :UInt64;
  recoverLogs @2 :List(RecoverLog);  # nodeRecover only: what the start's dirty region
                                     # logs said; a volume not listed (an older node:
                                     # none) is resynchronised whole
}

# One volume's entry of a nodeRecover (docs/PROTOCOL.md, "Node-crash recovery").
struct RecoverLog {
  dg @0 :Text;
  volume @1 :Text;
  logId @2 :UInt64;                  # the log read; another id now = whole resync
  ranges @3 :List(Disk.ByteRange);   # dirty ranges; empty = nothing to resync
}
