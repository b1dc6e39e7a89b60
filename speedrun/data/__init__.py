"""Data: shards, loader, datasets, text encoders, VAE, ``prepare``; heavy libraries are imported on use."""
