"""Run configs: one `get_config(variant)` file per command, every field commented."""
