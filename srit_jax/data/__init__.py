"""Host-side data: records, tokenised examples and batches, preference pairs, run files."""
