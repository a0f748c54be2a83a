"""polymodal's built-in plugins. Each module is registered through the ``polymodal`` entry-point
group exactly as a third-party plugin is, and listed in ``registry.toml``."""
