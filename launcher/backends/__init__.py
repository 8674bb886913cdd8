"""Launch mechanisms, one module each, found by name through ``base.get_backend``."""
