"""The model in memory: loading it, what its config says, its adapters (one per family), the
surgery that removes and restores structures, and what the device holds.
"""
