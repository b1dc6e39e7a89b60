"""Evaluation metrics: feature extractors (imported by ``get_extractor``), float64 statistics, FID, MMD."""
