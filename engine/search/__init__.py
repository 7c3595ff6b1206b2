"""The search: its settings, structures and plan, the scoring of candidates, the pruning state of
the model in memory, and the methods (MultiPruner, BlockPruner, SLEB, ShortGPT).
"""
