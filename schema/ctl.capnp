@0xa3d6f7923aac395a;
# The ctl API: plexctl and Cap'n Proto RPC clients -> any plexd node.

struct Placeholder { unused @0 :Bool; }
