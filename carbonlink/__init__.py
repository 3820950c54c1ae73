"""CarbonLink: measure, report and verify carbon from field devices to proofs on-chain."""

__version__ = "0.1.0"
