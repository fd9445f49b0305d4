"""Generation: the jitted sampler, batching and stop strings, streaming to JSONL."""
