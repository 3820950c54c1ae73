"""The gateway agent: drivers read devices, the agent signs and delivers batches."""
