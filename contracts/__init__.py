"""Solidity sources and their compiled artifacts, shipped as package data (build/*.json)."""
