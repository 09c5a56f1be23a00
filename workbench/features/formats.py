"""SAE files: ours are SAELens's layout; SAELens and sparsify folders are read too.

SAELens (6.x) layout, the one :func:`save_sae` writes::

    folder/
      cfg.json                  {"architecture": "topk", "d_in", "d_sae", "k", "dtype", "apply_b_dec_to_input",
                                 "normalize_activations": "none", ..., "metadata": {"model_name", "hook_name", ...}}
      sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out]
                                (+ threshold [d_sae] for JumpReLU)

The activation normalisation is folded into the weights on save (``W_enc * s``, ``W_dec / s``,
``b_dec / s``), so SAELens, which applies no scaling at run time for a saved SAE, reproduces our
``encode`` / ``decode`` on raw activations; the factors are recorded under
``metadata.workbench`` and unfolded again by :func:`load_sae`.

sparsify (EleutherAI) layout: a folder per hookpoint (an HF module path such as ``layers.6``)
with ``cfg.json`` (``k``, ``d_in``, ``num_latents`` or ``expansion_factor``, ``transcode`` ...) and
``sae.safetensors`` (``encoder.weight [n, d_in]``, ``encoder.bias``, ``W_dec [n, d_out]``, ``b_dec``).

Only JSON and safetensors are read: nothing is unpickled or executed.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from workbench.common.files import atomic_write
from workbench.features.sae import SAEError, SparseAutoencoder

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CFG = "cfg.json"
# The SAELens cfg.json layout we write (its 6.x "metadata" nesting).
SAELENS_LAYOUT_VERSION = "6.0.0"

# (our activation, transcoder?) <-> SAELens architecture name.
_ARCHITECTURES = {("topk", False): "topk", ("relu", False): "standard", ("jumprelu", False): "jumprelu",
                  ("relu", True): "transcoder", ("jumprelu", True): "jumprelu_transcoder",
                  ("topk", True): "topk_transcoder"}  # the last is ours: SAELens has no TopK transcoder class
_FROM_ARCHITECTURE = {v: k for k, v in _ARCHITECTURES.items()}


def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder`` in SAELens's layout (its two files replaced); returns the folder.

    >>> sae.save("runs/sae-l3")                                       # doctest: +SKIP
    """
    from safetensors.torch import save

    from workbench.common.versions import versions

    folder = Path(folder)
    s_in, s_out = sae.scale_in, sae.scale_out
    with torch.no_grad():
        tensors = {"W_enc": sae.W_enc * s_in, "b_enc": sae.b_enc.clone(),
                   "W_dec": sae.W_dec / s_out, "b_dec": sae.b_dec / s_out}
        if sae.activation == "jumprelu":
            tensors["threshold"] = sae.threshold.clone()
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    cfg: dict[str, Any] = {
        "architecture": _ARCHITECTURES[(sae.activation, sae.is_transcoder)],
        "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",  # folded into the weights (module docstring)
        "reshape_activations": "none",
    }
    if sae.activation == "topk":
        cfg |= {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    metadata = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
        "model_name": sae.model_name, "hook_name": sae.hook, "hook_head_index": None, "prepend_bos": True,
        **({"hook_name_out": sae.hook_out} if sae.is_transcoder else {}),
        **{k: v for k, v in sae.extra_cfg.items() if k != "workbench"},
        "workbench": {"version": versions().get("workbench"), "activation_scale_in": s_in,
                      "activation_scale_out": s_out,
                      "normalisation": "scalar: scaled activations have mean squared norm d_in; folded into "
                                       "the weights" if (s_in, s_out) != (1.0, 1.0) else "none"},
    }
    # Top-level copies of the names for readers of the older, flat SAELens layout.
    cfg |= {"model_name": sae.model_name, "hook_name": sae.hook, "metadata": metadata}
    # File by file, weights before cfg.json, so a folder that holds more (train_sae's checkpoint
    # and store) keeps it, and a killed save never pairs a new cfg.json with old weights.
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / SAELENS_WEIGHTS, save(tensors))
    atomic_write(folder / CFG, json.dumps(cfg, indent=2, default=str) + "\n")
    return folder


def load_sae(folder: str | Path, *, model=None, hook: str | None = None, hook_out: str | None = None,
             dtype: torch.dtype = torch.float32) -> SparseAutoencoder:
    """Read an SAE or transcoder folder: ours, SAELens's layout or sparsify's.

    Args:
        folder: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (SAELens, ours) or
            ``sae.safetensors`` (sparsify).
        model: check the shapes against this model's hooks (``model.hook_catalogue()``); a file
            that does not fit raises :class:`SAEError` naming both shapes.
        hook, hook_out: override the hook names the file records (sparsify records HF module
            paths such as ``layers.6``, mapped to TransformerLens hooks where the mapping is known).
        dtype: the parameters' dtype.

    >>> sae = wb.load_sae("runs/sae-l3", model=model)                   # doctest: +SKIP
    """
    folder = Path(folder)
    if not (folder / CFG).is_file():
        found = sorted(p.parent.name for p in folder.glob(f"*/{CFG}")) if folder.is_dir() else []
        hint = f"; it holds one SAE per sub-folder, load one of: {found}" if found else ""
        raise SAEError(f"{folder}: no {CFG} (not an SAELens or sparsify SAE folder){hint}")
    try:
        cfg = json.loads((folder / CFG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SAEError(f"{folder / CFG}: not valid JSON ({err})") from None
    if (folder / SAELENS_WEIGHTS).is_file():
        sae = _from_saelens(folder, cfg, dtype)
    elif (folder / SPARSIFY_WEIGHTS).is_file():
        sae = _from_sparsify(folder, cfg, dtype)
    else:
        raise SAEError(f"{folder}: has {CFG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify)")
    if hook is not None:
        sae.hook = hook
        sae.hook_out = hook_out or (hook if not sae.is_transcoder else sae.hook_out)
    elif hook_out is not None:
        sae.hook_out = hook_out
    if model is not None:
        check_fits(sae, model, source=folder)
    return sae


def check_fits(sae, model, source: Any = None) -> None:
    """Raise :class:`SAEError` unless ``sae``'s input / output widths are its hooks' widths in ``model``."""
    where = f"{source}: " if source is not None else ""
    for role, name, width in (("input", sae.hook, sae.d_in), ("output", sae.hook_out, sae.d_out)):
        if name is None:
            raise SAEError(f"{where}the SAE records no {role} hook; pass hook=")
        actual = hook_width(model, name)
        if actual != width:
            raise SAEError(f"{where}the SAE's {role} width is {width} (W_enc {[sae.d_in, sae.d_sae]}, "
                           f"W_dec {[sae.d_sae, sae.d_out]}) but hook {name!r} of {_model_name(model)} has width "
                           f"{actual}: this SAE was trained on another model or hook")


def hook_width(model, hook: str) -> int:
    """The last dimension of ``hook``'s activations in ``model`` (from its hook catalogue)."""
    from workbench.models.hooks import named_dims, select_hooks

    catalogue = model.hook_catalogue()
    rows = catalogue[catalogue["name"] == hook]
    if rows.empty:
        select_hooks(model, hook)  # raises with close names
        raise SAEError(f"hook {hook!r} is not in the model's catalogue")
    last = rows["shape"].iloc[0].strip("[]").split(", ")[-1]
    dims = named_dims(model)
    return int(dims[last]) if last in dims else int(last)


def _model_name(model) -> str:
    source = getattr(model, "source", None)
    return f"model {source.name!r}" if source is not None else "the model"


# --- SAELens ------------------------------------------------------------------------------


def _from_saelens(folder: Path, cfg: dict, dtype: torch.dtype) -> SparseAutoencoder:
    meta = cfg.get("metadata") or {}
    get = lambda key, default=None: meta.get(key, cfg.get(key, default))  # noqa: E731 (6.x nests, 5.x is flat)
    architecture = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if architecture == "standard" and (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk":
        architecture, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k")  # pre-6.0 TopK
    if architecture not in _FROM_ARCHITECTURE:
        raise SAEError(f"{folder / CFG}: architecture {architecture!r} is not supported "
                       f"(supported: {sorted(_FROM_ARCHITECTURE)})")
    activation, transcoder = _FROM_ARCHITECTURE[architecture]
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SAEError(f"{folder / CFG}: rescale_acts_by_decoder_norm=true is not supported; fold W_dec norms first")
    if get("hook_head_index") is not None or cfg.get("reshape_activations", "none") != "none":
        raise SAEError(f"{folder / CFG}: per-head (hook_z) SAEs are not supported")
    normalize = cfg.get("normalize_activations", "none")
    ours = meta.get("workbench") or {}
    if normalize not in ("none", "expected_average_only_in"):
        raise SAEError(f"{folder / CFG}: normalize_activations={normalize!r} is not supported")
    if normalize == "expected_average_only_in" and not ours:
        warnings.warn(f"{folder / CFG}: normalize_activations='expected_average_only_in' but the file holds no "
                      "scaling factor; the weights are used as they are (as SAELens's load_from_disk does)",
                      stacklevel=3)
    tensors = _read(folder / SAELENS_WEIGHTS)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    d_out = int(cfg.get("d_out", d_in))
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if activation == "jumprelu":
        expected["threshold"] = (d_sae,)
    _check_shapes(folder / SAELENS_WEIGHTS, tensors, expected)
    s_in, s_out = float(ours.get("activation_scale_in", 1.0)), float(ours.get("activation_scale_out", 1.0))
    extra = {key: value for key, value in meta.items() if key not in {"model_name", "hook_name", "hook_name_out"}}
    sae = SparseAutoencoder(d_in, d_sae, int(k or 1), get("hook_name") or get("hook_point"), activation=activation,
                            d_out=d_out, hook_out=get("hook_name_out") if transcoder else None,
                            scale_in=s_in, scale_out=s_out,
                            apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", not transcoder),
                            model_name=get("model_name"), dtype=dtype, extra_cfg=extra)
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"] / s_in)
        sae.b_enc.copy_(tensors["b_enc"])
        sae.W_dec.copy_(tensors["W_dec"] * s_out)
        sae.b_dec.copy_(tensors["b_dec"] * s_out)
        if activation == "jumprelu":
            sae.threshold.copy_(tensors["threshold"])
    return sae


# --- sparsify -----------------------------------------------------------------------------

# sparsify's hookpoints are HF module paths; their outputs in TransformerLens's names.
_SPARSIFY_HOOKS = [
    (r"(?:model\.)?layers\.(\d+)", "blocks.{0}.hook_resid_post", None),
    (r"(?:model\.)?layers\.(\d+)\.mlp", "blocks.{0}.hook_mlp_out", "blocks.{0}.mlp.hook_in"),
    (r"(?:model\.)?layers\.(\d+)\.self_attn", "blocks.{0}.hook_attn_out", None),
    (r"(?:model\.)?embed_tokens", "hook_embed", None),
]


def _from_sparsify(folder: Path, cfg: dict, dtype: torch.dtype) -> SparseAutoencoder:
    if cfg.get("activation", "topk") != "topk":
        raise SAEError(f"{folder / CFG}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    tensors = _read(folder / SPARSIFY_WEIGHTS)
    if "W_skip" in tensors or cfg.get("skip_connection"):
        raise SAEError(f"{folder / CFG}: sparsify skip connections (W_skip) are not supported")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(tensors)
    if missing:
        raise SAEError(f"{folder / SPARSIFY_WEIGHTS}: missing tensors {sorted(missing)}")
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    d_out = int(tensors["W_dec"].shape[-1])
    _check_shapes(folder / SPARSIFY_WEIGHTS, tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,),
                                                       "W_dec": (d_sae, d_out), "b_dec": (d_out,)})
    transcode = bool(cfg.get("transcode", False))
    hook, hook_out = _sparsify_hooks(folder.name, transcode)
    sae = SparseAutoencoder(d_in, d_sae, int(cfg["k"]), hook, activation="topk", d_out=d_out, hook_out=hook_out,
                            apply_b_dec_to_input=not transcode, dtype=dtype,
                            extra_cfg={"converted_from": "sparsify", "sparsify_hookpoint": folder.name})
    with torch.no_grad():
        sae.W_enc.copy_(tensors["encoder.weight"].T)
        sae.b_enc.copy_(tensors["encoder.bias"])
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_dec.copy_(tensors["b_dec"])
    return sae


def _sparsify_hooks(hookpoint: str, transcode: bool) -> tuple[str, str]:
    for pattern, out, transcoder_in in _SPARSIFY_HOOKS:
        match = re.fullmatch(pattern, hookpoint)
        if match:
            hook_out = out.format(*match.groups())
            if transcode and transcoder_in is not None:
                return transcoder_in.format(*match.groups()), hook_out
            return hook_out, hook_out
    warnings.warn(f"sparsify hookpoint {hookpoint!r} has no known TransformerLens hook; pass hook= to load_sae",
                  stacklevel=4)
    return hookpoint, hookpoint


# --- shared -------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEError(f"{path}: not a readable safetensors file ({err})") from None


def _check_shapes(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise SAEError(f"{path}: missing tensors {missing}")
    wrong = [f"{k} {list(tensors[k].shape)} (cfg.json implies {list(shape)})"
             for k, shape in expected.items() if tuple(tensors[k].shape) != tuple(shape)]
    if wrong:
        raise SAEError(f"{path}: tensor shapes do not match {CFG}: " + "; ".join(wrong))
