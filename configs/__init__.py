"""The YAML presets, installed as `stop_hf.configs` (see `stop_hf.config.list_presets`)."""
