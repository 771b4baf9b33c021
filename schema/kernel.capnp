@0xeeaeaa242b46bff6;
# The kernel interface: plexd (coordinator) -> plexd-target (data plane), over a Unix socket.
# Also the management API of a standalone plexd-target. docs/KERNEL_INTERFACE.md describes
# every method, the error codes and the prepare/commit/abort contract.
#
# Conventions
# - Sizes and offsets are in bytes (`...Bytes`), times carry their unit (`...Ms`, `...Us`).
# - A method that can fail returns `error :Error` in its results. The call succeeded when the
#   results have no `error` (`hasError()` is false); then the other results are set. Cap'n Proto
#   exceptions are kept for transport failures (connection lost, malformed message).

# Why a request failed; the target's own error kinds.
enum ErrorCode {
  notFound @0;  # no such bdev, volume, plex, iSCSI portal, target or LUN
  exists @1;    # the name is taken
  inUse @2;     # the object is used by another one (a bdev by a volume...)
  invalid @3;   # the request makes no sense for the object (bad layout, bad range...)
  timeout @4;   # the data plane did not answer in time (a drain, a reactor)
  io @5;        # an operating-system error (opening a file...)
}

struct Error {
  code @0 :ErrorCode;
  object @1 :Text;   # the object, e.g. "volume vol0", "bdev m0"
  reason @2 :Text;   # why, e.g. "not found"
  message @3 :Text;  # the whole text, "<object>: <reason>", as the target logs it
}

# ---- bdevs ----

enum BdevKind {
  null @0;    # completes everything at once, stores nothing
  malloc @1;  # memory (hugepages when the machine has them)
  uring @2;   # a file or block device through io_uring (O_DIRECT unless `buffered`)
  error @3;   # wraps `inner` and injects failures or latency on command (injectError)
}

struct BdevRequest {
  kind @0 :BdevKind;
  name @1 :Text;
  sizeBytes @2 :UInt64;   # null, malloc
  blockSize @3 :UInt32;   # null, malloc, uring; 0 = default (512, or the device's for uring)
  path @4 :Text;          # uring
  inner @5 :Text;         # error: the bdev it wraps
  buffered @6 :Bool;      # uring: through the page cache instead of O_DIRECT
}

struct BdevInfo {
  name @0 :Text;
  kind @1 :Text;          # null, malloc, uring, error, volume
  blockSize @2 :UInt32;
  sizeBytes @3 :UInt64;
  detail @4 :Text;        # backend detail: path, hugepages, active injection...
  refused @5 :UInt64;     # I/O failed with EAGAIN by the bdev's own bounded queue since it was
                          # opened: uring MAX_WAITING_IOS, error MAX_DELAYED_IOS; 0 for the others
}

# ---- volumes ----

enum PlexState {
  active @0;    # up to date: reads and writes
  stale @1;     # out of date after an I/O error: neither
  detached @2;  # detached by the administrator: neither
  syncing @3;   # being resynchronised: writes, not reads
}

enum PlexLayout {
  concat @0;
  stripe @1;
}

struct SubdiskSpec {
  bdev @0 :Text;
  offsetBytes @1 :UInt64;
  lenBytes @2 :UInt64;
}

struct Column {
  subdisks @0 :List(SubdiskSpec);
}

struct PlexSpec {
  name @0 :Text;
  layout @1 :PlexLayout;
  stripeUnitBytes @2 :UInt64;   # stripe only
  columns @3 :List(Column);     # concat: exactly one
  state @4 :PlexState;
}

struct ReadPolicy {
  union {
    leastBusy @0 :Void;   # fewest reads outstanding on the reactor (the default)
    round @1 :Void;       # rotate over ACTIVE plexes
    prefer @2 :Text;      # this plex while it is ACTIVE, else least busy
  }
}

struct VolumeSpec {
  name @0 :Text;
  sizeBytes @1 :UInt64;
  plexes @2 :List(PlexSpec);    # 1..32 mirrors
  readPolicy @3 :ReadPolicy;
  shared @4 :Bool;              # served only under the data-plane lease (renewLease)
  log @5 :DirtyLogSpec;         # this node's dirty region log section; unset: no log
  localDetach @6 :Bool;         # a write failed on a plex (and done on another) fails
                                # with EIO, reported with its range, instead of being
                                # held for a detach (the group's local detach policy)
}

struct DirtyLogSpec {
  # One node's section of a mirrored volume's dirty region log (docs/ONDISK.md,
  # "Dirty region log"): a region is marked there before a write to it is issued,
  # on every copy of the log (the first copy is bdev/offsetBytes, the others
  # moreCopies; at most MAX_LOG_COPIES = 2 in all, on distinct bdevs).
  bdev @0 :Text;
  offsetBytes @1 :UInt64;       # start of the section on the bdev (4096-aligned)
  sectionBytes @2 :UInt64;      # room for the section
  node @3 :UInt32;
  logId @4 :UInt64;             # a new id: the data plane starts the section afresh
  regionBytes @5 :UInt64;       # power of two, 64 KiB .. 1 GiB
  moreCopies @6 :List(DrlCopy); # the log's other copies (unset: one copy)
}

struct DrlCopy {
  # One copy of a dirty region log section.
  bdev @0 :Text;
  offsetBytes @1 :UInt64;       # start of the section on the bdev (4096-aligned)
}

struct VolumeStats {
  readOps @0 :UInt64;
  writeOps @1 :UInt64;          # writes, write-zeroes, unmaps
  otherOps @2 :UInt64;          # flushes, resets
  readBytes @3 :UInt64;
  writeBytes @4 :UInt64;
  failedOps @5 :UInt64;
  readRetries @6 :UInt64;       # reads that succeeded on another plex after a failure
  latencyNsTotal @7 :UInt64;    # divide by the op count for the mean
  latencyNsMax @8 :UInt64;
  # I/O failed with EAGAIN (retry later) because a bounded queue of the volume's
  # channels was full; each is also in failedOps.
  parkedRefused @9 :UInt64;     # MAX_PARKED_IOS parked behind a closed gate (quiesce)
  heldRefused @10 :UInt64;      # MAX_HELD_WRITES held for a plex detach, or no detach could be queued
  inflightRefused @11 :UInt64;  # MAX_VOLUME_IOS already in flight or held
  # The dirty region log (a volume with VolumeSpec.log).
  logWrites @12 :UInt64;        # log writes completed (init, marks, cleans), the volume's total
  logWaits @13 :UInt64;         # writes that waited for a log write before being issued
  logDirtyRegions @14 :UInt64;  # regions dirty in this node's section as last written
  logRefused @15 :UInt64;       # MAX_DRL_WAITING writes already waited (or the owner's mailbox was full)
  logCopyFailures @16 :UInt64;  # log copies whose write failed and that are no longer written under this spec
}

struct PlexInfo {
  name @0 :Text;
  state @1 :PlexState;
  layout @2 :PlexLayout;
  lenBytes @3 :UInt64;          # usable bytes
  columns @4 :List(Column);
}

struct VolumeInfo {
  name @0 :Text;
  sizeBytes @1 :UInt64;
  blockSize @2 :UInt32;
  state @3 :Text;               # ENABLED, or QUIESCED while a prepare or quiesce holds it
  staged @4 :Bool;              # a prepared layout waits for commit or abort
  readPolicy @5 :ReadPolicy;
  plexes @6 :List(PlexInfo);
  stats @7 :VolumeStats;        # summed over reactors
  inflight @8 :UInt64;          # I/Os under way
  parked @9 :UInt64;            # I/Os waiting behind a closed gate
  held @10 :UInt64;             # writes held until a failed plex is detached
}

# ---- faults, diagnostics, events ----

enum DetachPolicy {
  local @0;     # standalone: a plex whose write failed is detached (STALE) by the target
  external @1;  # clustered: the controller decides (setPlexState or failHeldWrites)
}

enum FailOn {
  reads @0;
  writes @1;    # writes, write-zeroes, unmaps, flushes
  both @2;
}

struct Injection {
  union {
    fail :group {
      on @0 :FailOn;
      errno @1 :Int32;          # 0 = EIO
      count @2 :UInt64;         # the next `count` matching I/Os; 0 = until cleared
    }
    latencyUs @3 :UInt64;       # added to every I/O from now on; 0 removes it
    clearFailures @4 :Void;
    clear @5 :Void;             # failures and latency
  }
}

enum IoOp {
  read @0;
  write @1;
  flush @2;
  writeZeroes @3;
  unmap @4;
}

struct Event {
  union {
    plexIoError :group {        # a write to a plex failed; its writes are held
      volume @0 :Text;          # (or failed: the volume's local detach policy)
      plex @1 :Text;
      errno @2 :Int32;
      failedOffsetBytes @16 :UInt64;  # the write failed (not held): its range;
      failedLenBytes @17 :UInt64;     # 0 = the write is held (added later)
    }
    plexState :group {          # a plex changed state
      volume @3 :Text;
      plex @4 :Text;
      state @5 :PlexState;
    }
    diskGone :group {           # a backing device went away
      bdev @6 :Text;
      reason @7 :Text;
    }
    leaseExpired :group {       # the data-plane lease ran out (or was revoked): the
      volumes @8 :List(Text);   # shared volumes now fenced (their I/O fails)
    }
    prOut :group {              # a PERSISTENT RESERVE OUT on a LUN whose reservations the
      request @9 :UInt64;       # cluster keeps (IscsiLun.clusterReservations) would change
      volume @10 :Text;         # them: run it cluster-wide, then answer with prOutDone
      initiator @11 :Text;      # I_T nexus: initiator port name "iqn,i,0x<ISID>"
      relativePort @12 :UInt16; # I_T nexus: this target's relative port (ALUA)
      serviceAction @13 :UInt8;
      scopeType @14 :UInt8;     # the CDB's scope and type byte
      parameters @15 :Data;     # the parameter list (24 bytes)
    }
  }
}

# Implemented by the subscriber; the target calls it once per event, in order, one call at a
# time. An error or a disconnect ends the subscription.
interface EventSink {
  event @0 (event :Event) -> ();
}

enum PollMode {
  adaptive @0;
  always @1;
}

struct TargetInfo {
  version @0 :Text;
  reactors @1 :UInt32;
  cores @2 :List(Int32);        # per reactor; -1 = not pinned
  pollMode @3 :PollMode;
  hugepages @4 :Bool;           # the buffer pool is on hugepages
  socket @5 :Text;
  pid @6 :UInt32;
  detachPolicy @7 :DetachPolicy;
}

# ---- iSCSI frontend (docs/ISCSI.md, "Managing targets at run time") ----
# Errors name the iSCSI object: "iscsi portal 127.0.0.1:3260", "iscsi target iqn.…",
# "lun 3 of iqn.…", "iscsi frontend".

struct IscsiLun {
  lun @0 :UInt64;         # 0..16383
  bdev @1 :Text;          # a bdev or volume of this target
  deviceId @2 :Text;      # the identity of VPD 80h/83h; empty = the bdev name
  readOnly @3 :Bool;
  alua @4 :Alua;          # absent: one group 1, relative port 1, active/optimized
  clusterReservations @5 :Bool;  # persistent reservations kept by the cluster (a shared
                                 # volume): set by setReservations, PR OUT as prOut events
}

# ALUA (docs/ISCSI.md, "ALUA"): the target port groups of the device a LUN is a path to.
struct Alua {
  localGroup @0 :UInt16;           # this target's port group
  relativePort @1 :UInt16;         # this target's port (relative target port id)
  groups @2 :List(AluaPortGroup);  # every group, this one included (at most 64)
}

struct AluaPortGroup {
  id @0 :UInt16;
  state @1 :AluaState;
  ports @2 :List(UInt16);          # relative target port ids (at most 16)
}

enum AluaState {
  activeOptimized @0;
  activeNonOptimized @1;
  standby @2;
  unavailable @3;
  transitioning @4;
}

# CHAP secrets are write-only: every answer leaves `secret` and `mutualSecret` empty and
# says with `hasSecret` / `hasMutualSecret` whether they are set.
struct IscsiChap {
  user @0 :Text;
  secret @1 :Text;
  mutualUser @2 :Text;      # empty = none
  mutualSecret @3 :Text;    # empty = no mutual CHAP
  hasSecret @4 :Bool;       # answers only
  hasMutualSecret @5 :Bool; # answers only
}

struct IscsiTarget {
  iqn @0 :Text;
  alias @1 :Text;               # empty = none
  luns @2 :List(IscsiLun);
  allow @3 :List(Text);         # initiators allowed; empty = every one not denied
  deny @4 :List(Text);          # initiators refused (deny wins over allow)
  chap @5 :IscsiChap;           # absent = no CHAP
}

struct IscsiConnection {
  reactor @0 :UInt32;
  peer @1 :Text;                # address:port of the initiator
  commands @2 :UInt64;          # SCSI commands received
  readBytes @3 :UInt64;         # bytes the initiator read
  writeBytes @4 :UInt64;        # bytes the initiator wrote
  errors @5 :UInt64;            # commands that ended in CHECK CONDITION (not a unit attention) or RESERVATION CONFLICT
  buffersHeld @6 :UInt64;       # pool buffers the connection holds now (tasks, queued Data-In)
  cmdsWaitingBuf @7 :UInt64;    # commands accepted but waiting for a pool buffer now
  sendBlockedMs @8 :UInt64;     # total ms blocked on send (initiator not reading), current stretch included
}

struct IscsiSession {
  tsih @0 :UInt16;
  initiator @1 :Text;
  isid @2 :Text;                # 12 hex digits
  target @3 :Text;              # empty for discovery sessions
  connections @4 :List(IscsiConnection);  # one today (MaxConnections=1)
}

# ---- persistent reservations kept by the cluster (docs/ISCSI.md, "Persistent reservations") ----

struct PrRegistration {
  initiator @0 :Text;         # initiator port name
  relativePort @1 :UInt16;    # the target port it registered through
  key @2 :UInt64;
}

struct Reservations {
  generation @0 :UInt32;      # PRgeneration
  aptpl @1 :Bool;
  registrations @2 :List(PrRegistration);
  reserved @3 :Bool;          # a persistent reservation is held (then the fields below)
  holder @4 :Text;            # its holder's initiator port (all-registrants types: any)
  holderPort @5 :UInt16;
  type @6 :UInt8;             # SPC-4 type code (1 WE, 3 EA, 5 WE_RO, 6 EA_RO, 7 WE_AR, 8 EA_AR)
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

enum PrOutResult {
  committed @0;     # the cluster committed it (setReservations came first): GOOD
  stale @1;         # refused against a newer state: the target decides again
  unavailable @2;   # the cluster cannot run it now: NOT READY 04h/0Ah, hosts retry
}

# ---- the data-plane lease (docs/KERNEL_INTERFACE.md, "The data-plane lease") ----

enum LeaseState {
  none @0;      # never granted: shared volumes are not served
  valid @1;     # shared volumes are served until the lease runs out
  expired @2;   # ran out or was revoked: shared volumes are fenced
}

interface Kernel {
  info @0 () -> (info :TargetInfo);

  createBdev @1 (bdev :BdevRequest) -> (error :Error, info :BdevInfo);
  deleteBdev @2 (name :Text) -> (error :Error);
  listBdevs @3 () -> (error :Error, bdevs :List(BdevInfo));

  createVolume @4 (spec :VolumeSpec) -> (error :Error, info :VolumeInfo);
  deleteVolume @5 (name :Text) -> (error :Error);
  listVolumes @6 () -> (error :Error, volumes :List(VolumeInfo));
  getVolume @7 (name :Text) -> (error :Error, info :VolumeInfo, spec :VolumeSpec);

  # Kernel phase of a transaction: close the volume's gate (new I/O is parked), wait up to
  # drainTimeoutMs (0 = 10 s) for in-flight I/O to drain on every reactor, stage `spec`.
  # On failure nothing is staged and I/O resumes. quiesceUs: time from call to drained.
  prepare @8 (volume :Text, spec :VolumeSpec, drainTimeoutMs :UInt32)
      -> (error :Error, quiesceUs :UInt64);
  commit @9 (volume :Text) -> (error :Error);   # swap the staged layout in, resume I/O
  abort @10 (volume :Text) -> (error :Error);   # drop the staged layout, resume I/O
  quiesce @11 (volume :Text, drainTimeoutMs :UInt32) -> (error :Error, quiesceUs :UInt64);
  resume @12 (volume :Text) -> (error :Error);  # end a quiesce (same as abort)

  setPlexState @13 (volume :Text, plex :Text, state :PlexState) -> (error :Error);
  failHeldWrites @14 (volume :Text) -> (error :Error);
  setDetachPolicy @15 (policy :DetachPolicy) -> (error :Error);

  injectError @16 (bdev :Text, injection :Injection) -> (error :Error, detail :Text);

  # Events from now on go to `sink` until this connection closes or a sink call fails.
  subscribe @17 (sink :EventSink) -> (error :Error);

  # Diagnostics: one I/O on a bdev or volume, submitted on reactor `reactor`, at most
  # 1 MiB; `data` is what to write (lenBytes long). status: 0 or the errno it failed with.
  io @18 (bdev :Text, op :IoOp, offsetBytes :UInt64, lenBytes :UInt32, data :Data,
          reactor :UInt32, timeoutMs :UInt32)
      -> (error :Error, status :Int32, data :Data, latencyUs :UInt64);

  # iSCSI frontend. The first iscsiAddPortal (or iscsiAddTarget) of a target started
  # without an [iscsi] section starts the frontend with its defaults.
  iscsiAddPortal @19 (addr :Text) -> (error :Error, bound :Text);  # "ip:port", port 0 = pick
  iscsiRemovePortal @20 (addr :Text) -> (error :Error);   # established sessions stay
  iscsiPortals @21 () -> (error :Error, portals :List(Text));
  iscsiAddTarget @22 (target :IscsiTarget) -> (error :Error);
  iscsiRemoveTarget @23 (iqn :Text) -> (error :Error);    # closes its sessions
  iscsiAddLun @24 (iqn :Text, lun :IscsiLun) -> (error :Error);
  iscsiRemoveLun @25 (iqn :Text, lun :UInt64) -> (error :Error);
  iscsiAllowInitiator @26 (iqn :Text, initiator :Text) -> (error :Error);
  iscsiDenyInitiator @27 (iqn :Text, initiator :Text) -> (error :Error);  # closes its sessions
  iscsiSetChap @28 (iqn :Text, chap :IscsiChap) -> (error :Error);  # chap absent = clear
  iscsiTargets @29 () -> (error :Error, targets :List(IscsiTarget));  # secrets left out
  iscsiSessions @30 () -> (error :Error, sessions :List(IscsiSession));

  # The data-plane lease. Shared volumes (VolumeSpec.shared) are served until now + leaseMs on
  # the target's clock (CLOCK_BOOTTIME); leaseMs = 0 revokes at once. A duration is measured
  # from the moment it arrives: a coordinator uses renewLeaseUntil (@47) instead. wasExpired: the lease had run
  # out (or been revoked) before this call. Private volumes are not affected (their lease:
  # renewPrivateLeaseUntil); creating,
  # preparing, committing and aborting layouts is allowed in every lease state.
  renewLease @31 (leaseMs :UInt32) -> (error :Error, wasExpired :Bool);
  # remainingMs: 0 unless valid. expiries: how often the lease ran out or was revoked.
  leaseStatus @32 () -> (error :Error, state :LeaseState, remainingMs :UInt64, expiries :UInt64);
  # Replaces a LUN's ALUA view (its groups and their states); a LUN fenced by the lease
  # reports its own group unavailable whatever was set.
  iscsiSetAlua @33 (iqn :Text, lun :UInt64, alua :Alua) -> (error :Error);

  # NVMe-oF/TCP frontend (docs/NVMF.md). The first nvmfAddListener (or
  # nvmfAddSubsystem) of a target started without an [nvmf] section starts the
  # frontend (controller ids 1..=65519, ANA group 1).
  nvmfAddListener @34 (addr :Text) -> (error :Error, bound :Text);  # "ip:port", port 0 = pick
  nvmfRemoveListener @35 (addr :Text) -> (error :Error);  # established connections stay
  nvmfAddSubsystem @36 (subsystem :NvmfSubsystem) -> (error :Error);
  nvmfRemoveSubsystem @37 (nqn :Text) -> (error :Error);  # drops its controllers
  nvmfAddNamespace @38 (nqn :Text, namespace :NvmfNamespace) -> (error :Error);
  nvmfRemoveNamespace @39 (nqn :Text, nsid :UInt32) -> (error :Error);
  # This node's ANA group state; hosts that enabled ANA change notices get an AEN.
  nvmfSetAna @40 (state :NvmfAnaState) -> (error :Error, group :UInt32);
  nvmfSubsystems @41 () -> (error :Error, subsystems :List(NvmfSubsystem), listeners :List(Text));
  nvmfControllers @42 () -> (error :Error, controllers :List(NvmfController));
  # The committed reservations of shared volume `volume` (a bdev name): every LUN of it
  # with clusterReservations takes them (RESERVE(6) holders stay), and so does a LUN
  # mapped later. Allowed whether or not a LUN maps the volume now.
  setReservations @43 (volume :Text, state :Reservations) -> (error :Error);
  # The answer to the prOut event `request`; notFound when no such request waits (it
  # timed out, or was answered).
  prOutDone @44 (request :UInt64, result :PrOutResult) -> (error :Error);
  # Starts the frontend with this node's controller id range and ANA group if none
  # runs; one running with the same settings is fine, other settings are `invalid`
  # (they are fixed while it runs).
  nvmfStart @45 (cntlidMin :UInt16, cntlidMax :UInt16, anaGroup :UInt32) -> (error :Error);
  # One chunk of a plex resync, inside the data plane: copies [offsetBytes, +lenBytes) of
  # `volume` from plex sourcePlex (ACTIVE) to plex targetPlex (SYNCING) through the volume's
  # own layout, reactor to disk (no data on this socket). It does NOT quiesce: the caller
  # holds the cluster's fence (the volume quiesced on every node) for the whole call.
  # Refused (invalid) unless the volume is quiesced on this data plane, the plexes' states
  # are right, the range is block-aligned, inside the volume and at most 1 MiB
  # (MAX_COPY_BYTES), and, for a shared volume, the lease is valid; notFound for an
  # unknown volume or plex; io names the plex and bdev whose read or write failed.
  copyRange @46 (volume :Text, sourcePlex :Text, targetPlex :Text, offsetBytes :UInt64,
                 lenBytes :UInt32) -> (error :Error);
  # The data-plane lease as an absolute deadline: shared volumes are served until untilNs
  # (nanoseconds) of the host's CLOCK_BOOTTIME, the clock the caller read when it computed
  # the deadline (same host, same boot, same time namespace; docs/KERNEL_INTERFACE.md). A
  # deadline already past (0 among them) revokes at once, so a caller frozen between
  # computing and sending never extends its lease. Otherwise as renewLease.
  renewLeaseUntil @47 (untilNs :UInt64) -> (error :Error, wasExpired :Bool);
  # The private-group lease, as renewLeaseUntil the shared one: private volumes are
  # served until untilNs once it was first granted (before that: without a lease). A
  # coordinator renews it while it finds its node the owner of its private groups on
  # their disks, so a node frozen or cut off while another takes a group over
  # (`dg import --clear-owner`) stops writing it (docs/OPERATIONS.md). A separate method
  # (not a flag of renewLeaseUntil) so that an older data plane refuses it instead of
  # renewing its shared lease.
  renewPrivateLeaseUntil @48 (untilNs :UInt64) -> (error :Error, wasExpired :Bool);
  # The private-group lease's state (none: never granted, private volumes served).
  privateLeaseStatus @49 () -> (error :Error, state :LeaseState, remainingMs :UInt64, expiries :UInt64);
}

struct NvmfNamespace {
  nsid @0 :UInt32;              # 1..=1024
  bdev @1 :Text;                # bdev or volume
  identity @2 :Text;            # NGUID/EUI-64/UUID derive from it; empty = the bdev name
  readOnly @3 :Bool;
}

struct NvmfSubsystem {
  nqn @0 :Text;
  serial @1 :Text;              # empty = derived from the NQN
  model @2 :Text;               # empty = "plexd"
  hosts @3 :List(Text);         # host NQNs allowed (unless allowAny)
  allowAny @4 :Bool;
  namespaces @5 :List(NvmfNamespace);
  peerListeners @6 :List(Text); # "ip:port" of other nodes exporting it: listed in the discovery log
}

enum NvmfAnaState {
  optimized @0;
  nonOptimized @1;
  inaccessible @2;
}

struct NvmfIoQueue {
  qid @0 :UInt16;
  reactor @1 :UInt32;
}

struct NvmfController {
  cntlid @0 :UInt16;
  subnqn @1 :Text;
  hostnqn @2 :Text;
  peer @3 :Text;                # address:port of the admin queue's host side
  reactor @4 :UInt32;           # of the admin queue
  ioQueues @5 :List(NvmfIoQueue);
  katoMs @6 :UInt32;
  commands @7 :UInt64;
  readBytes @8 :UInt64;
  writeBytes @9 :UInt64;
  errors @10 :UInt64;
}
