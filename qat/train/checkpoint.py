"""Atomic checkpoints with clear errors (a killed save never leaves a half-written file)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    pass


def save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def drop_resume_checkpoint(path: Path) -> None:
    """Delete a finished run's resume checkpoint: its trained checkpoint holds the same state (and is the
    branch point of post-step recipes), so keeping both costs a third of the run's disk for nothing."""
    Path(path).unlink(missing_ok=True)


def load(path: Path, mmap: bool = False) -> dict:
    """A checkpoint dict; `mmap=True` maps tensor storage instead of reading it (a cheap look at its metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def load_model_weights(path: Path) -> dict:
    """A state dict from our FP checkpoints ({'model': ...}) or a plain state dict (hub / timm files)."""
    obj = load(path)
    state = obj.get("model", obj.get("state_dict", obj))
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no model state dict")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
