"""What a run delivers: evaluations (lm-eval and perplexity), exports (checkpoint folders and GGUF
files), speed measurements and comparisons of sessions.
"""
