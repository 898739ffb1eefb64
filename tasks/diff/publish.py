"""The diff's Markdown as a Prefect artifact of its flow run, best effort like the stage reports
(tasks.core.report.publish_report, whose table layout does not fit a diff)."""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import Future

from tasks.core.report import run_into

LOG = logging.getLogger(__name__)
ARTIFACT_KEY = "release-diff"


def publish_diff(markdown: str, description: str, timeout_s: float = 30.0) -> bool:
    """Attach the Markdown to the current flow run; a Prefect API that is down or slow costs a
    warning, not the diff, whose files are already written. Returns whether it was published."""
    from prefect.artifacts import create_markdown_artifact

    def publish() -> None:
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description=description)

    # A daemon thread in a copy of this context (where Prefect keeps the flow run): a hung
    # call must not keep the finished process alive.
    done: Future[None] = Future()
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run_into, publish, done), daemon=True).start()
    try:
        done.result(timeout=timeout_s)
        return True
    except Exception as exc:  # the files are written; only the UI's copy is missing
        LOG.warning("%s: written, but not published to the Prefect UI (%s)", description, exc)
        return False
