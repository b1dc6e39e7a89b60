"""prx-speedrun: a harness to race text-to-image training recipes fairly."""

import os

# Set before anything imports torch: OpenMP threads that spin while waiting starve, and are starved by, any other
# busy process on the same cores (tiny trains at 4-30% of its quiet speed beside one, 41-47% with passive waits;
# BENCHMARKS.md, "A fair share of the CPU"). Waiting changes no number. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
