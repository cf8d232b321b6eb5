"""W&B logging for training runs and reading runs back for tables (`RunLogger`, `read_local_runs`).

Named `qat.logging`; inside the package use absolute imports, so `import logging` stays the stdlib.
"""

from .run_logger import RunLogger, bits_tag, git_commit, new_run_id, run_name, run_tags
from .run_reader import RunRecord, by_name, read_api_runs, read_local_runs, record_from_api_run

__all__ = [
    "RunLogger", "RunRecord", "bits_tag", "by_name", "git_commit", "new_run_id", "read_api_runs",
    "read_local_runs", "record_from_api_run", "run_name", "run_tags",
]
