"""The sparse autoencoder (and transcoder): activations -> sparse latents -> reconstruction.

Parameters follow SAELens's names and shapes, so a saved file is theirs (``formats.py``)::

    W_enc [d_in, d_sae]    b_enc [d_sae]    W_dec [d_sae, d_out]    b_dec [d_out]

    encode(x) = act((x * scale_in - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)     # [.., d_sae]
    decode(z) = (z @ W_dec + b_dec) / scale_out                                         # [.., d_out]

``act`` is TopK (keep the ``k`` largest pre-activations, ReLU'd; Gao et al. 2024), ReLU, or
JumpReLU (``relu(pre) * (pre > threshold)``; what a BatchTopK SAE becomes after training, and what
Llama Scope and Gemma Scope ship). ``scale_in`` / ``scale_out`` are the activation
normalisation: one scalar each, chosen at training so the mean squared norm of the scaled
activations is ``d_in`` (``normalisation="scalar"``); 1.0 when there is none. For an SAE
``d_out == d_in`` and the two scales are equal; a transcoder reads ``hook`` (an MLP's input) and
writes ``hook_out`` (that MLP's output), with ``apply_b_dec_to_input=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.common.errors import WorkbenchError

ACTIVATIONS = ("topk", "relu", "jumprelu")


class SAEError(WorkbenchError, ValueError):
    """An SAE file is malformed or unsupported, or does not fit the model it is used with."""


class SparseAutoencoder(nn.Module):
    """A TopK / ReLU / JumpReLU sparse autoencoder or transcoder over one hook's activations.

    Args:
        d_in: width of the input hook's activations.
        d_sae: number of latents.
        k: active latents per token (TopK); ignored by other activations.
        hook: the hook the input is read at (``blocks.3.hook_resid_post``).
        activation: ``"topk"``, ``"relu"`` or ``"jumprelu"``.
        d_out: width of the output (default ``d_in``; a transcoder's MLP-out width).
        hook_out: where the reconstruction goes (default ``hook``; a transcoder's MLP output).
        scale_in, scale_out: the activation normalisation factors (see the module docstring).
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (SAEs: yes; transcoders: no).
        model_name: the model the SAE was trained on (recorded in ``cfg.json``).
        seed: initialisation seed (decoder rows unit-norm, encoder = decoder transposed).

    >>> sae = SparseAutoencoder(d_in=8, d_sae=32, k=4, hook="blocks.0.hook_resid_post")
    >>> x = torch.randn(5, 8)
    >>> sae.encode(x).shape, int((sae.encode(x) > 0).sum(-1).max()) <= 4, sae(x).shape
    (torch.Size([5, 32]), True, torch.Size([5, 8]))
    """

    def __init__(self, d_in: int, d_sae: int, k: int = 32, hook: str | None = None, *,
                 activation: str = "topk", d_out: int | None = None, hook_out: str | None = None,
                 scale_in: float = 1.0, scale_out: float | None = None, apply_b_dec_to_input: bool | None = None,
                 model_name: str | None = None, dtype: torch.dtype = torch.float32, seed: int = 0,
                 extra_cfg: dict[str, Any] | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; use one of {ACTIVATIONS}")
        if activation == "topk" and not 0 < int(k) <= int(d_sae):
            raise ValueError(f"k={k} must be in 1..d_sae={d_sae}")
        self.d_in, self.d_sae, self.k = int(d_in), int(d_sae), int(k)
        self.d_out = int(d_out) if d_out is not None else self.d_in
        self.hook = hook
        self.hook_out = hook_out if hook_out is not None else hook
        self.activation = activation
        self.scale_in = float(scale_in)
        self.scale_out = float(scale_out) if scale_out is not None else self.scale_in
        transcoder = self.d_out != self.d_in or (hook_out is not None and hook_out != hook)
        self.apply_b_dec_to_input = (not transcoder) if apply_b_dec_to_input is None else bool(apply_b_dec_to_input)
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise ValueError("apply_b_dec_to_input needs d_out == d_in (b_dec is subtracted from the input)")
        self.model_name = model_name
        # Whatever else a loaded cfg.json said (dataset, context size ...), written back on save.
        self.extra_cfg = dict(extra_cfg or {})
        generator = torch.Generator().manual_seed(int(seed))
        w_dec = torch.randn(self.d_sae, self.d_out, generator=generator, dtype=torch.float64)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        # Tied initialisation (Gao et al. 2024 sec. A.1); a transcoder has no transpose to tie to.
        w_enc = w_dec.T.clone() if not transcoder else torch.randn(
            self.d_in, self.d_sae, generator=generator, dtype=torch.float64) / self.d_in ** 0.5
        self.W_enc = nn.Parameter(w_enc.to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out, dtype=dtype))
        # JumpReLU thresholds (pre-activation space); unused by the other activations.
        self.register_buffer("threshold", torch.zeros(self.d_sae, dtype=dtype))

    @property
    def is_transcoder(self) -> bool:
        return self.d_out != self.d_in or self.hook_out != self.hook

    # --- the maps -------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x * scale_in - b_dec) @ W_enc + b_enc``: ``[..., d_in] -> [..., d_sae]``."""
        x = x.to(self.W_enc.dtype) * self.scale_in
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function on pre-activations ``[..., d_sae]``."""
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        if self.activation == "relu":
            return pre.relu()
        return pre.relu() * (pre > self.threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations ``[..., d_in]`` -> latents ``[..., d_sae]`` (dense, mostly zeros)."""
        return self.activate(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` -> reconstruction ``[..., d_out]`` in the hook's own units."""
        return (z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.scale_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    # --- helpers --------------------------------------------------------------------------

    def feature_direction(self, i: int) -> torch.Tensor:
        """Latent ``i``'s unit decoder direction ``[d_out]`` in the hook's space (for steering)."""
        row = self.W_dec[int(i)].detach().float()
        return row / row.norm()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale each decoder row to unit norm (the encoder is left as it is)."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps)

    def save(self, folder) -> Any:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` in SAELens's layout (see ``formats.py``)."""
        from workbench.features.formats import save_sae

        return save_sae(self, folder)

    def __repr__(self) -> str:
        what = "Transcoder" if self.is_transcoder else "SparseAutoencoder"
        k = f", k={self.k}" if self.activation == "topk" else ""
        out = f" -> {self.hook_out!r}" if self.is_transcoder else ""
        return f"{what}({self.activation}, d_in={self.d_in}, d_sae={self.d_sae}{k}, hook={self.hook!r}{out})"
