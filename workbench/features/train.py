"""``train_sae``: a TopK / BatchTopK sparse autoencoder or transcoder trained from an activation store.

Why our own step, not a library's (DESIGN.md asks for a maintained library's model and step
"where one fits"; evaluated on sae-lens 6.54.12, eai-sparsify 1.3.3, dictionary-learning 0.1.0):

- **sae-lens** installs with ``--no-deps`` but does not import under transformer-lens 4.x: its
  ``saes/sae.py`` imports ``transformer_lens.HookedTransformer`` and its package ``__init__``
  imports ``transformer_lens.components``, both gone in 4.0. Using it would mean stubbing
  TransformerLens modules inside our package. Its trainer also expects its own
  ``ActivationsStore`` (HF datasets), not ours. We keep its *file layout* (``formats.py``).
- **dictionary-learning** pins ``nnsight<0.4`` and pulls wandb, umap-learn and circuitsvis; its
  package ``__init__`` imports nnsight (through ``buffer.py``), so even its trainers need the stack.
- **eai-sparsify** imports (it adds simple-parsing, natsort and schedulefree) and its
  ``SparseCoder`` is a clean TopK model with the AuxK loss, but its ``Trainer`` hooks an HF model
  over an HF dataset itself, so it cannot stream from a store or resume from a data position; its
  encoder returns (values, indices) rather than the dense latents a hook point needs; it has no
  BatchTopK; and its files are not SAELens's. What we would use of it is ~40 lines of
  arithmetic, at the price of three dependencies and a second weight layout.

So the model and step are ours, short, and checked against independent computations: the
tests compare our forward, FVU and AuxK loss with sparsify's ``SparseCoder.forward`` on the same
weights (sparsify is a test dependency only), TopK against a numpy reference, and the files
against sparsify's own writer and SAELens's documented layout. The step follows Gao et al.
2024 ("Scaling and evaluating sparse autoencoders"): TopK activation, loss = FVU + alpha * AuxK
(AuxK: the top ``d_in / 2`` dead latents reconstruct the residual, scaled by
``min(n_dead / (d_in / 2), 1)``, alpha = 1/32), tied initialisation, ``b_dec`` at the data mean,
unit-norm decoder rows with the gradient component parallel to them removed, Adam
(eps 6.25e-10), lr ``2e-4 / sqrt(d_sae / 2^14)``. Only the selected latents are decoded
(``embedding_bag``) and only they get gradient: the encoder's backward multiplies by the sparse
matrix of selected gradients (``topk_encoder.py``), which halves a CPU step. BatchTopK
(Bussmann et al. 2024) keeps the ``k * batch`` largest activations of the whole batch while
training and becomes a JumpReLU with the mean batch threshold afterwards, as SAELens saves it.

Data: each batch is 8 runs of ``batch_size / 8`` consecutive store rows, the runs in a seeded
permutation per epoch, so reading is a few contiguous slices of the memory map and memory does
not grow with the number of tokens. Resuming: ``out/checkpoint`` holds the weights, Adam's
moments, the dead-latent counters and the step (safetensors + JSON); the batch of a step
depends only on the seed and the step, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from workbench.common.files import atomic_path, atomic_write, atomic_write_json
from workbench.features.formats import load_sae, save_sae
from workbench.features.sae import SAEError, SparseAutoencoder
from workbench.features.topk_encoder import topk_encode

MANIFEST = "training.json"
AUX_ALPHA = 1 / 32
ADAM_EPS = 6.25e-10
RUNS_PER_BATCH = 8
NORM_SAMPLE_RUNS = 64  # runs of rows the normalisation and b_dec are estimated on


def train_sae(source, hook: str, *, hook_out: str | None = None, expansion: int = 16, d_sae: int | None = None,
              k: int = 32, architecture: str = "topk", tokens: int | None = None, batch_size: int = 4096,
              lr: float | None = None, aux_alpha: float = AUX_ALPHA, dead_after: int = 10_000_000,
              normalise: bool = True, seed: int = 0, out: str | Path | None = None, save_every: int = 1000,
              log_every: int = 50, device: str | None = None, progress: bool = True) -> SparseAutoencoder:
    """Train a TopK or BatchTopK SAE (or, with ``hook_out``, a transcoder) on a hook's activations.

    Args:
        source: an :class:`~workbench.ActivationStore` holding ``hook`` (and ``hook_out``), read in
            batches from its memory map; or a ``(model, texts)`` pair, cached first with
            ``cache_activations`` (every position after BOS) into ``out/store`` (or memory).
        hook: the input hook (``"blocks.3.hook_resid_post"``; a transcoder's ``blocks.3.mlp.hook_in``).
        hook_out: a transcoder's target hook (``"blocks.3.hook_mlp_out"``); default: autoencode ``hook``.
        expansion, d_sae: number of latents, ``d_sae`` or ``expansion * d_in``.
        k: active latents per token (on average over the batch for BatchTopK).
        architecture: ``"topk"`` or ``"batchtopk"``.
        tokens: training tokens (default: one pass over the store); rounded down to whole batches.
        batch_size: tokens per step (a multiple of 8 mixes 8 places of the store per batch).
        lr: Adam's learning rate (default ``2e-4 / sqrt(d_sae / 2**14)``, Gao et al. 2024).
        aux_alpha: weight of the AuxK loss on dead latents.
        dead_after: a latent that has not fired for this many tokens is dead (feeds AuxK).
        normalise: scale activations by one scalar so their mean squared norm is ``d_in``
            (recorded in the SAE and its files; ``decode`` returns the hook's own units).
        seed: initialisation and data order.
        out: folder for the SAE (SAELens layout), ``training.json``, ``checkpoint/`` (every
            ``save_every`` steps) and ``store/``; rerun the same call after a kill to resume.
        log_every: steps between log rows (``sae.training_log``) and progress-bar updates.
        device: where to train (default: CUDA if available, else CPU).
        progress: a tqdm bar with tokens/s, L0, explained variance and dead fraction.

    Returns:
        The trained :class:`~workbench.features.SparseAutoencoder`, on the CPU, with
        ``training_log`` (a DataFrame: step, tokens, loss, fvu, auxk, l0, dead_fraction).

    >>> store = wb.cache_activations(model, texts, "blocks.12.hook_resid_post", positions="all",
    ...                              path="runs/acts-l12")             # doctest: +SKIP
    >>> sae = wb.train_sae(store, "blocks.12.hook_resid_post", k=32, out="runs/sae-l12")  # doctest: +SKIP
    """
    if architecture not in ("topk", "batchtopk"):
        raise SAEError(f"architecture={architecture!r}; use 'topk' or 'batchtopk'")
    out = Path(out) if out is not None else None
    store = _store(source, hook, hook_out, out, progress)
    x_rows = store[hook]
    y_rows = store[hook_out] if hook_out is not None else x_rows
    d_in, d_out = int(x_rows.shape[-1]), int(y_rows.shape[-1])
    d_sae = int(d_sae or expansion * d_in)
    order = _Order(len(x_rows), batch_size, seed)
    steps = max(1, (tokens if tokens is not None else len(x_rows)) // order.batch_size)
    settings = {"hook": hook, "hook_out": hook_out, "d_in": d_in, "d_out": d_out, "d_sae": d_sae, "k": int(k),
                "architecture": architecture, "steps": steps, "batch_size": order.batch_size,
                "lr": float(lr or 2e-4 / math.sqrt(d_sae / 2**14)), "aux_alpha": float(aux_alpha),
                "dead_after": int(dead_after), "normalise": bool(normalise), "seed": int(seed),
                "n_rows": len(x_rows), "store": str(store.path) if store.path else None}
    if out is not None and (done := _finished(out, settings)) is not None:
        return done
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sae = SparseAutoencoder(d_in, d_sae, k, hook, d_out=d_out, hook_out=hook_out, seed=seed,
                            model_name=(store.config.get("model") or {}).get("name"))
    sae.extra_cfg = {"training": {k_: v for k_, v in settings.items() if k_ not in ("hook", "hook_out")}}
    state = _State(sae.d_sae)
    start = _resume(out / "checkpoint", sae, state, settings) if out is not None else None
    if start is None:
        _initialise(sae, order, x_rows, y_rows, normalise)
        start = 0
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings["lr"], eps=ADAM_EPS)
    if start:
        _load_optimizer(out / "checkpoint", sae, optimizer)
    if out is not None:
        atomic_write_json(out / MANIFEST, {"status": "running", "settings": settings})
    bar = _bar(steps * order.batch_size, start * order.batch_size, progress)
    for step in range(start, steps):
        x, y = _batch(order, step, x_rows, y_rows)
        x = x.to(device) * sae.scale_in
        y = x if hook_out is None else y.to(device) * sae.scale_out
        stats = training_step(sae, optimizer, x, y, state, settings)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            state.log.append({"step": step + 1, "tokens": (step + 1) * order.batch_size, **stats})
            if bar is not None:
                bar.set_postfix_str(f"L0 {stats['l0']:.1f}, EV {1 - stats['fvu']:.3f}, "
                                    f"dead {stats['dead_fraction']:.1%}")
        if bar is not None:
            bar.update(order.batch_size)
        if out is not None and (step + 1) % save_every == 0 and step + 1 < steps:
            _save_checkpoint(out / "checkpoint", sae, optimizer, state, step + 1, settings)
    if bar is not None:
        bar.close()
    sae.to("cpu")
    _finish(sae, state, settings)
    sae.training_log = pd.DataFrame(state.log)
    if out is not None:
        save_sae(sae, out)
        atomic_write_json(out / MANIFEST, {"status": "done", "settings": settings, "log": state.log})
    return sae


class _State:
    """What training carries besides weights and Adam: dead-latent counters, BatchTopK threshold, log."""

    def __init__(self, d_sae: int):
        self.since_fired = torch.zeros(d_sae, dtype=torch.int64)  # tokens since each latent last fired
        self.threshold_sum = 0.0  # BatchTopK: sum over steps of the smallest kept activation
        self.threshold_n = 0
        self.log: list[dict[str, Any]] = []


def training_step(sae: SparseAutoencoder, optimizer, x: torch.Tensor, y: torch.Tensor, state: _State,
                  settings: dict) -> dict[str, float]:
    """One Adam step on a batch ``x [B, d_in] -> y [B, d_out]`` (already normalised); its statistics."""
    dead = state.since_fired >= settings["dead_after"]  # as AuxK sees them in this step
    losses = topk_losses(sae, x, y, dead.to(x.device), settings["k"], batch_topk=settings["architecture"] == "batchtopk")
    loss = losses["fvu"] + settings["aux_alpha"] * losses["auxk"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        # Only the gradient orthogonal to each unit decoder row changes the row's direction.
        grad = sae.W_dec.grad
        grad -= (grad * sae.W_dec).sum(-1, keepdim=True) * sae.W_dec
    optimizer.step()
    sae.normalize_decoder()
    state.since_fired += len(x)
    state.since_fired[losses["fired"].cpu()] = 0
    if settings["architecture"] == "batchtopk":
        state.threshold_sum += losses["threshold"]
        state.threshold_n += 1
    return {"loss": loss.item(), "fvu": losses["fvu"].item(), "auxk": losses["auxk"].item(),
            "l0": losses["l0"], "dead_fraction": float(dead.float().mean())}


def topk_losses(sae: SparseAutoencoder, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor | None, k: int,
                batch_topk: bool = False) -> dict[str, torch.Tensor]:
    """The TopK training forward on normalised ``x``, ``y``: reconstruction, FVU and AuxK loss (Gao et al. 2024).

    ``fvu = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` over the batch; ``auxk`` is the same
    ratio for the residual ``e = y - y_hat`` (no gradient) against its reconstruction from the
    ``k_aux = d_out // 2`` largest dead-latent activations (``W_dec`` only, no ``b_dec``), times
    ``min(n_dead / k_aux, 1)``; zero when no latent is dead. Also ``fired`` (which latents were
    active in the batch), ``l0`` and, for BatchTopK, ``threshold`` (the smallest kept activation).
    """
    pre = x - sae.b_dec if sae.apply_b_dec_to_input else x
    n_dead = int(dead.sum()) if dead is not None else 0
    k_aux = min(y.shape[-1] // 2, n_dead)
    out: dict = {}
    if batch_topk:
        acts = (pre @ sae.W_enc + sae.b_enc).relu()
        values, flat = acts.flatten().topk(k * len(x), sorted=False)
        z = torch.zeros_like(acts).flatten().scatter(0, flat, values).view_as(acts)
        recon = z @ sae.W_dec + sae.b_dec
        active = z.detach() > 0
        out["fired"], out["l0"] = active.any(0), float(active.sum(-1).float().mean())
        out["threshold"] = float(values.detach()[values.detach() > 0].min()) if bool(active.any()) else 0.0
        if k_aux:
            aux_values, aux_indices = torch.where(dead, acts, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    else:
        # Only the k active latents (and AuxK's dead ones) are decoded and receive gradient.
        values, indices, aux_values, aux_indices = topk_encode(pre, sae.W_enc, sae.b_enc, k, dead, k_aux)
        recon = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
        active = values.detach() > 0
        out["fired"] = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, indices[active], True)
        out["l0"] = float(active.sum(-1).float().mean())
    e = y - recon
    total_variance = (y - y.mean(0)).pow(2).sum()
    fvu = e.pow(2).sum() / total_variance
    auxk = fvu.new_zeros(())
    if k_aux:
        scale = min(n_dead / (y.shape[-1] // 2), 1.0)
        e_hat = F.embedding_bag(aux_indices, sae.W_dec, per_sample_weights=aux_values, mode="sum")
        auxk = scale * (e_hat - e.detach()).pow(2).sum() / total_variance
    return {**out, "recon": recon, "fvu": fvu, "auxk": auxk}


# --- data ---------------------------------------------------------------------------------


class _Order:
    """Which store rows batch ``step`` holds: ``RUNS_PER_BATCH`` runs of consecutive rows, the runs
    of each epoch in a permutation seeded by ``(seed, epoch)``."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.runs = RUNS_PER_BATCH if batch_size % RUNS_PER_BATCH == 0 else 1
        self.run = batch_size // self.runs
        self.batch_size = self.run * self.runs
        self.n_runs = n_rows // self.run
        if self.n_runs < self.runs:
            raise SAEError(f"the store holds {n_rows} rows, fewer than one batch of {batch_size}; "
                           "cache more text or pass a smaller batch_size")
        self.seed = seed
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def starts(self, step: int) -> list[int]:
        """First rows of the runs that make up batch ``step``."""
        starts = []
        for g in range(step * self.runs, (step + 1) * self.runs):
            epoch, position = divmod(g, self.n_runs)
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_runs)
            starts.append(int(self._perm[position]) * self.run)
        return starts


def _batch(order: _Order, step: int, x_rows, y_rows) -> tuple[torch.Tensor, torch.Tensor]:
    starts = order.starts(step)
    take = lambda rows: torch.from_numpy(np.concatenate([rows[s:s + order.run] for s in starts])).float()  # noqa: E731
    return take(x_rows), (take(y_rows) if y_rows is not x_rows else None)


def _store(source, hook: str, hook_out: str | None, out: Path | None, progress: bool):
    if isinstance(source, tuple) and len(source) == 2:
        from workbench.store import cache_activations

        model, texts = source
        hooks = [hook] + ([hook_out] if hook_out else [])
        # After BOS: its activations are outliers by orders of magnitude in LLaMA models.
        source = cache_activations(model, texts, hooks, positions=slice(1, None),
                                   path=out / "store" if out is not None else None, progress=progress)
    for name in [hook] + ([hook_out] if hook_out else []):
        if name not in source:
            raise SAEError(f"hook {name!r} is not in the store (it holds {source.hooks})")
        if len(source[name].shape) != 2:
            raise SAEError(f"hook {name!r} has activations of shape {source[name].shape[1:]} per row; "
                           "an SAE needs one vector per row")
    return source


@torch.no_grad()
def _initialise(sae: SparseAutoencoder, order: _Order, x_rows, y_rows, normalise: bool) -> None:
    # The normalisation and b_dec from the first runs of epoch 0: seeded, so resumable runs agree.
    sample_steps = max(1, min(NORM_SAMPLE_RUNS, order.n_runs) // order.runs)
    xs, ys = zip(*(_batch(order, s, x_rows, y_rows) for s in range(sample_steps)), strict=True)
    x = torch.cat(xs).double()
    y = x if ys[0] is None else torch.cat(ys).double()
    if normalise:
        sae.scale_in = float(math.sqrt(sae.d_in / x.pow(2).sum(-1).mean()))
        sae.scale_out = sae.scale_in if ys[0] is None else float(math.sqrt(sae.d_out / y.pow(2).sum(-1).mean()))
    sae.b_dec.copy_((y.mean(0) * sae.scale_out).to(sae.b_dec.dtype))


def _finish(sae: SparseAutoencoder, state: _State, settings: dict) -> None:
    if settings["architecture"] == "batchtopk":
        sae.activation = "jumprelu"
        sae.threshold.fill_(state.threshold_sum / max(state.threshold_n, 1))


# --- checkpoints --------------------------------------------------------------------------


def _save_checkpoint(folder: Path, sae, optimizer, state: _State, step: int, settings: dict) -> None:
    from safetensors.torch import save

    names = dict(sae.named_parameters())
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in names.items()}
    by_id = {id(p): n for n, p in names.items()}
    for p, entry in optimizer.state.items():
        for key, value in entry.items():
            tensors[f"adam.{by_id[id(p)]}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    tensors["since_fired"] = state.since_fired.clone()
    meta = {"step": step, "settings": settings, "scale_in": sae.scale_in, "scale_out": sae.scale_out,
            "threshold_sum": state.threshold_sum, "threshold_n": state.threshold_n, "log": state.log}
    with atomic_path(folder, directory=True) as tmp:
        atomic_write(tmp / "state.safetensors", save(tensors))
        atomic_write(tmp / "state.json", json.dumps(meta, indent=1))


def _resume(folder: Path, sae, state: _State, settings: dict) -> int | None:
    """Load ``folder``'s checkpoint into ``sae`` and ``state``; its step, or None when there is none."""
    if not (folder / "state.json").is_file():
        return None
    from safetensors.torch import load_file

    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    _same_settings(folder, meta["settings"], settings)
    tensors = load_file(str(folder / "state.safetensors"))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(tensors[f"param.{name}"])
    sae.scale_in, sae.scale_out = meta["scale_in"], meta["scale_out"]
    state.since_fired = tensors["since_fired"].clone()
    state.threshold_sum, state.threshold_n, state.log = meta["threshold_sum"], meta["threshold_n"], meta["log"]
    return int(meta["step"])


def _load_optimizer(folder: Path, sae, optimizer) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state.safetensors"))
    for name, p in sae.named_parameters():
        entry = {key.rsplit(".", 1)[1]: value.to(p.device) for key, value in tensors.items()
                 if key.startswith(f"adam.{name}.")}
        if entry:
            entry["step"] = entry["step"].cpu()  # Adam keeps its step count on the CPU
            optimizer.state[p] = entry


def _finished(out: Path, settings: dict) -> SparseAutoencoder | None:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return None
    saved = json.loads(manifest.read_text(encoding="utf-8"))
    _same_settings(out, saved["settings"], settings)
    if saved.get("status") != "done":
        return None
    sae = load_sae(out)
    sae.training_log = pd.DataFrame(saved.get("log", []))
    return sae


def _same_settings(where: Path, saved: dict, settings: dict) -> None:
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        raise SAEError(f"{where}: holds a run with other settings ({', '.join(differ)}); "
                       "use another out= folder or delete this one")


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc="training SAE",
                mininterval=0.5, smoothing=0.1)


