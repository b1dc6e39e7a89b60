"""prx-speedrun: a harness to race text-to-image training recipes fairly."""

__version__ = "0.1.0"
