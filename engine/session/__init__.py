"""The session folder on disk: its files, the journal and settings, the lock, the checks a resume
makes, the summary, and how files are written whole.
"""
