"""The Textual app over the engine: live panes, and a user who steers."""
