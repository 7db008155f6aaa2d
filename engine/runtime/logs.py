"""Console logging for the commands (`mmrec ...`, `python -m indexers`): one setup for all."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

NOISY_LOGGERS = ("httpx", "huggingface_hub", "urllib3", "PIL")


def configure_logging(level: str) -> None:
    """Log lines on stderr through rich at ``level``; third-party chatter only from WARNING."""
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_model_loading() -> None:
    """Per-load weight progress bars from transformers add noise to our own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
