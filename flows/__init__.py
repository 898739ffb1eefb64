"""One Prefect flow per pipeline stage, each run as `python -m flows.NAME` by its dvc.yaml stage.

Importing this package fixes the process environment every stage needs before Prefect or any
ML library is imported: run history in the project's own Prefect home, nothing phoning home.
Values already set by the user win.
"""

import os
from pathlib import Path

_DEFAULTS = {
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    # The ephemeral server needs well over the default 20 s to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DEEPEVAL_TELEMETRY_OPT_OUT": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)
