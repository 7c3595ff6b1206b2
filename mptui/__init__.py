"""mptui: MultiPruner in a terminal.

This module must stay tiny: the engine (``mptui.engine``) lives in this namespace and importing
it must not drag in the app or Textual.
"""

__version__ = "0.1.0"
