"""Fault injection: run the real pipeline, break it on purpose, count what was lost or doubled."""
