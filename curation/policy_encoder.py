"""Prompts embedded by the policy itself: the base model's last hidden state, mean-pooled over the prompt.

arXiv 2511.05993 clusters the policy's own representations of the prompts; a sentence encoder sees the
words, the policy sees what it will be asked. Each prompt is embedded as the policy reads it (its chat
template, or the plain layout of a model without one), and the last layer's hidden states are averaged
over the prompt's tokens (padding excluded). The vectors go through the same on-disk cache as MiniLM's,
keyed by the model folder's fingerprint, so a retrained base model gets fresh vectors.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from polymath.errors import ModelError
from polymath.loading import LoadOptions, load_model
from polymath.prompting import format_prompt

from .embedding import model_fingerprint, resolve_device


class PolicyEncoder:
    """A causal LM folder as a :class:`curation.embedding.TextEncoder` (loaded on first use)."""

    def __init__(self, model_dir: Path | str, load: LoadOptions | None = None, device: str | None = None,
                 max_length: int = 1024):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelError(f"{self.model_dir}: not a model folder (no config.json); curate.encoder: policy embeds "
                             "with the pipeline's base model")
        self.load = load or LoadOptions()
        self.device = device
        self.max_length = max_length
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_dir.resolve().parent.name)
        self.name = f"policy-{slug}-{model_fingerprint(self.model_dir)}"
        self.model = None
        self.tokenizer = None

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        if self.model is None:
            self.model, self.tokenizer = load_model(self.model_dir, self.load, device=resolve_device(self.device))
            self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                prompts = [format_prompt(t, self.tokenizer) for t in texts[start:start + batch_size]]
                batch = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                       max_length=self.max_length, add_special_tokens=False).to(device)
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1].float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                out.append(pooled.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)
