"""Hot-path kernels: a torch reference and optional Triton implementations behind one dispatch point."""
