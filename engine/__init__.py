"""The pruning engine: MultiPruner and BlockPruner on Hugging Face causal LMs.

Imports nothing from the app and nothing from Textual (a test checks this in a fresh
interpreter). The public API is re-exported from :mod:`mptui.engine.api`.
"""
