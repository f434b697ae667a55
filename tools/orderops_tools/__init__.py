"""Tools around the processors: the simulator (the upstream systems' stand-in) and replay."""
