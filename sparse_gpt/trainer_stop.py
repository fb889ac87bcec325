"""Stopping a training run cleanly on Ctrl-C or SIGTERM: at a step boundary, never mid-step."""
from __future__ import annotations

import signal
import threading
from typing import Optional

import torch
import torch.distributed as dist


class StopOnSignal:
    """While open, SIGINT and SIGTERM ask the loop to stop at the next step boundary instead of
    killing it mid-step; a second signal stops at once (the checkpoints on disk stay intact)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, world: int, device: str) -> Optional[int]:
        """The signal that asked to stop, agreed on by every process (one stops, all stop)."""
        if world == 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
