"""Checkpoint conversion: Hugging Face safetensors and GGUF in, Hugging Face out."""
