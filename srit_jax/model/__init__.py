"""The decoder: architecture config, Flax modules, attention kernels, rotary embeddings."""
