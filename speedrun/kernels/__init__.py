"""Hot-path kernels: a torch reference and optional Triton implementations behind one dispatch point."""

from speedrun.kernels.dispatch import active_backend, attention, qk_norm_rope, rms_norm, set_backend

__all__ = ["active_backend", "attention", "qk_norm_rope", "rms_norm", "set_backend"]
