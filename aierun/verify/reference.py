"""The independent reference: Hugging Face transformers running the same checkpoint.

verify and diagnosis compare the production pipeline against this model: the same
checkpoint directory, loaded by `AutoModelForCausalLM` on the CPU with torch, fed a
whole token sequence at once (teacher-forced). torch comes with the `reference`
extra and is imported only here, only when a reference is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from aierun import gguf_model
from aierun.errors import UserError

log = structlog.get_logger("aierun.verify.reference")


@dataclass(frozen=True)
class ReferenceRun:
    """One teacher-forced forward pass, as fp32 numpy arrays."""

    logits: np.ndarray  # [T, V]: row t scores the token after position t
    # Per decoder layer, [T, E]: the residual stream right after that layer, before
    # the final norm (what our pipeline's on_layer hook sees). Empty unless asked for.
    hidden: list[np.ndarray]


class Reference:
    """transformers' `AutoModelForCausalLM` on a checkpoint directory, CPU only."""

    def __init__(self, model_dir: Path, dtype: str = "bfloat16"):
        torch = _import_torch()
        from transformers import AutoModelForCausalLM

        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"reference dtype {dtype!r} is not a torch dtype (try bfloat16)")
        self._torch = torch
        self.dtype = dtype
        location, options = gguf_model.transformers_location(Path(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(
            location, **options, dtype=getattr(torch, dtype)
        ).eval()
        log.info("reference.loaded", model=Path(model_dir).name, dtype=dtype)

    @property
    def layers(self) -> Sequence[Any]:
        return self.model.model.layers

    def run(self, ids: Sequence[int], hidden: bool = False) -> ReferenceRun:
        """Logits for every position of `ids`, and with `hidden` the residual stream
        after every decoder layer."""
        torch = self._torch
        captured: list[np.ndarray] = []
        # Forward hooks on the decoder layers, not `output_hidden_states`: that tuple
        # starts with the embeddings and ends with the *final-normed* last layer,
        # while we compare every layer's raw output, the last one included.
        layers = self.layers if hidden else []
        hooks = [layer.register_forward_hook(_capture_into(captured)) for layer in layers]
        try:
            with torch.inference_mode():
                out = self.model(torch.tensor([list(ids)], dtype=torch.long), use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        logits = out.logits[0].float().numpy()
        return ReferenceRun(logits, captured)


def _capture_into(captured: list[np.ndarray]):
    def hook(module, inputs, output) -> None:
        states = output[0] if isinstance(output, tuple) else output  # older versions: tuple
        captured.append(states[0].float().numpy())

    return hook


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise UserError(
            "verify and diagnosis compare against Hugging Face transformers running on "
            "torch, and torch is not installed. Install the reference extra: "
            "pip install 'aie-llm[reference]' (a CPU-only torch is enough)."
        ) from exc
    return torch
