@0x85c21f2ae4bde6cd;
# The cluster protocol between plexd coordinators (membership, transactions).
#
# Each node serves one TCP address; its bootstrap capability is a `Peer`, which
# extends the public `Ctl` interface so plexctl and peers share the port. A node opens
# one connection to every other configured node and calls `deliver` for each protocol
# message, in order. The message body is the core's `Message`, JSON-encoded by
# `Message::encode` (configurations and changes inside it are the daemon's JSON
# encoding of the model; see docs/OPERATIONS.md).

using Ctl = import "ctl.capnp";

interface Peer extends(Ctl.Ctl) {
  deliver @0 (from :UInt32, incarnation :UInt64, message :Data) -> ();

  # Resync fences (coordinator/src/daemon/fence.rs): `hold` quiesces `volume` (a
  # volume bdev, DG.VOL) on this node's data plane for the copy `token` of node
  # `from`, which must be this node's master; this node must have applied
  # transaction minTxnView.minTxnN. A release (`hold` false) resumes it and answers
  # `intact` = the fence held from the hold until now. `error` empty = done.
  fence @1 (from :UInt32, volume :Text, hold :Bool, token :UInt64,
            minTxnView :UInt64, minTxnN :UInt64) -> (error :Text, intact :Bool);

  # The first call on a peer connection: node `from` says which cluster it belongs
  # to (the cluster file's `id`) and the node list it was started with (`id=name@
  # address` per node in id order, comma-separated). The callee answers with its own;
  # `error` is non-empty when they differ (the callee then refuses every `deliver`
  # on the connection and logs both nodes and the differing value). `deliver` is
  # refused on a connection without a successful `hello`.
  hello @2 (from :UInt32, clusterId :Text, nodeList :Text)
        -> (error :Text, clusterId :Text, nodeList :Text);
}
