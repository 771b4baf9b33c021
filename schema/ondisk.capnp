@0x8a33fae244616b45;
# The disk group configuration as stored in the private region's slots.

struct Placeholder { unused @0 :Bool; }
