"""Hardware-free devices: every driver has a simulator speaking the real protocol."""
