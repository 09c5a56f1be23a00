"""Training: LoRA fine-tuning through ``peft`` (``finetune``) and its instruction data.

An experiment floor beside probing, patching and evals: it reads the model and writes a new
checkpoint (a merged Hugging Face folder) that ``load_model``, ``diff_checkpoints`` and
``compare_models`` take like any other.
"""

from workbench.training.data import benign_alpaca, instruction_rows
from workbench.training.lora import FinetuneError, FinetuneResult, finetune

__all__ = ["finetune", "FinetuneResult", "FinetuneError", "benign_alpaca", "instruction_rows"]
