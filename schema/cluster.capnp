@0x85c21f2ae4bde6cd;
# The cluster protocol between plexd coordinators (membership, transactions).

struct Placeholder { unused @0 :Bool; }
