@0xeeaeaa242b46bff6;
# The kernel interface: plexd (coordinator) -> plexd-target (data plane), over a Unix socket.
# Also the management API of a standalone plexd-target.

struct Placeholder { unused @0 :Bool; }
