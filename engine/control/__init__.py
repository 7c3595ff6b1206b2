"""Control of a run: commands and what each does in each state, the events, the one reducer every
reader folds them through, and serving a run to other processes.
"""
