"""Directions in a hook's activation space, with provenance, saved as safetensors.

Probes find them (:mod:`workbench.probing`), steering and ablation use them
(:mod:`workbench.models.interventions`): they live on the ground floor so both can.

A direction file holds one unit vector per hook (tensor name = hook name, shape ``[d_model]``)
and, in the safetensors header metadata, where it came from: concept, method, layer, data hash,
model fingerprint and the probe's cross-validated accuracy. safetensors never executes code on
load and memory-maps, so a direction file from someone else is as safe as one of ours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_path


@dataclass
class Direction:
    """A unit vector in a hook's activation space, and where it came from.

    Attributes:
        vector: unit-norm float32 array ``[d]``.
        hook: the hook whose activations it lives in (``blocks.12.hook_resid_post``).
        layer: the block index (None outside blocks).
        concept: the probe concept (``gender``) or ``"random"`` for a baseline.
        method: ``logistic``, ``mass_mean``, ``ridge`` or ``random``.
        provenance: everything else worth knowing (data hash, model fingerprint, accuracy ...).

    >>> d = Direction(np.array([3.0, 4.0]), "blocks.0.hook_resid_post", 0, "toy", "manual")
    >>> d.vector.tolist()
    [0.6000000238418579, 0.800000011920929]
    """

    vector: np.ndarray
    hook: str
    layer: int | None
    concept: str
    method: str
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        vector = np.asarray(self.vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"direction for {self.hook} has norm {norm}: cannot be made a unit vector")
        self.vector = vector / norm

    def __repr__(self) -> str:
        score = {k: v for k, v in self.provenance.items() if k.startswith("cv_")}
        return (f"Direction({self.concept!r}, hook={self.hook!r}, method={self.method!r}, "
                f"d={self.vector.shape[0]}{''.join(f', {k}={v:.3f}' for k, v in score.items())})")

    def torch(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.vector, dtype=dtype, device=device)

    def random_like(self, seed: int = 0) -> "Direction":
        """A random unit direction in the same space: the baseline any effect must beat."""
        rng = np.random.default_rng(seed)
        return Direction(rng.standard_normal(self.vector.shape[0]), self.hook, self.layer, "random",
                         "random", {"seed": seed, "baseline_for": self.concept})

    def project(self, X) -> np.ndarray:
        """Scalar projection of each row of ``X`` ``[n, d]`` on the direction."""
        return np.asarray(X, dtype=np.float32) @ self.vector


def save_directions(path: str | Path, directions: list[Direction]) -> Path:
    """Write directions (one per hook) to a ``.safetensors`` file.

    >>> save_directions("runs/gender.safetensors", [result.direction(12)])   # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    hooks = [d.hook for d in directions]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"one direction per hook: {hooks}")
    tensors = {d.hook: torch.from_numpy(d.vector.copy()) for d in directions}
    meta = {d.hook: {k: v for k, v in asdict(d).items() if k not in ("vector", "hook")} for d in directions}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"workbench_directions": json.dumps(meta, default=_jsonable)})
    return path


def load_directions(path: str | Path) -> dict[str, Direction]:
    """Read a direction file: ``{hook: Direction}``.

    >>> directions = load_directions("runs/gender.safetensors")          # doctest: +SKIP
    >>> directions["blocks.12.hook_resid_post"].concept                 # doctest: +SKIP
    'gender'
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get("workbench_directions")
            if raw is None:
                raise WorkbenchError(f"{path}: a safetensors file but not a workbench direction file")
            meta = json.loads(raw)
            return {hook: Direction(f.get_tensor(hook), hook, **meta[hook]) for hook in f.keys()}
    except WorkbenchError:
        raise
    except Exception as err:  # safetensors has its own error types for missing/corrupt files
        raise WorkbenchError(f"{path}: cannot read directions: {err}") from None


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
