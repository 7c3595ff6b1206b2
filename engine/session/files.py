"""The names of everything a session folder holds, defined once.

The engine writes these, the CLIs and the app read some of them back, and tests look at them:
one name each, so a rename cannot leave a reader behind. Why each file is written the way it
is, is told where it is written (:mod:`.session_folder`, :mod:`.recovery.folder`). Importing
this module imports nothing.
"""

#: The run request (with ``--out`` and ``--export``), written once; its presence marks a session.
SETTINGS = "settings.json"
#: One line per decision of the user, fsynced before the decision is announced.
JOURNAL = "journal.jsonl"
#: The plan, replaced after every change.
PLAN = "plan.json"
#: The event log, for reading.
EVENTS = "events.jsonl"
#: The log of the process that owns the session (and of the app on it).
LOG = "mptui.log"
#: Held (flock) by the one process that owns the session.
LOCK = "lock"
#: The L1 channel order taken at the start, re-applied by resume, eval, export and recovery.
CHANNEL_ORDER = "channel_order.safetensors"
#: The socket a headless run serves on, for ``mptui attach``.
SOCKET = "engine.sock"
#: The token a run served on TCP (``--listen``) asks its clients for.
TOKEN = "token"
#: The scores of ``mptui eval --session`` and of the app's evaluations.
EVALUATION = "evaluation.json"
#: The summary, as JSON and as Markdown.
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
#: The output of the background workers the app attaches to (``mptui MODEL --workers N``).
WORKERS_LOG = "workers.log"
#: Where the app exports when ``--export`` named no folder.
EXPORT = "export"

#: Recovery's folder, and what it holds.
RECOVERY = "recovery"
RECOVERY_SETTINGS = "settings.json"
RECOVERY_CHECKPOINT = "checkpoint.pt"
#: What the load of an export's recovery scores the model on (it has no calibration set).
RECOVERY_CALIBRATION = "calibration.txt"
#: One line per optimizer step and per validation (beside the folder, for reading).
RECOVERY_LOG = "recovery.jsonl"
