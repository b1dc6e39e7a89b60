"""The reference denoiser: PRX configs and construction."""

from speedrun.model.prx import MODEL_CONFIGS, BlockHooks, PRXBlock, PRXConfig, PRXDenoiser, build_model

__all__ = ["MODEL_CONFIGS", "BlockHooks", "PRXBlock", "PRXConfig", "PRXDenoiser", "build_model"]
