"""Task classes; the list of task families lives in benchmarks/__init__.py (TASK_FAMILIES)."""

from .base import Task
from .retrieval import RetrievalTask
from .zero_shot import ZeroShotTask

__all__ = ["RetrievalTask", "Task", "ZeroShotTask"]
