"""Protocol drivers, one module each, registered explicitly in registry.py."""
