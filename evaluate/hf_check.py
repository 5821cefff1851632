"""Checks that a vitnas export loads in Hugging Face transformers and gives
vitnas's logits.

    vitnas export --supernet runs/fmnist-sandwich --arch uniform.json --out runs/hf-check
    vitnas eval --model runs/hf-check --data <fashion-mnist dir> --limit 1000 --dump runs/hf-check/vitnas-logits.safetensors
    torchenv/bin/python evaluate/hf_check.py runs/hf-check runs/hf-check/vitnas-logits.safetensors

Prints the largest absolute logit difference and the agreement of the
predictions; exits non-zero above 1e-4.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import ViTForImageClassification

model_dir, dump = sys.argv[1], sys.argv[2]
model = ViTForImageClassification.from_pretrained(model_dir).eval()
ref = load_file(dump)
with torch.no_grad():
    logits = model(pixel_values=ref["pixel_values"]).logits
diff = (logits - ref["logits"]).abs().max().item()
agree = (logits.argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()
print(f"{model_dir}: {logits.shape[0]} images, max |logit difference| {diff:.3e}, "
      f"predictions agree {agree * 100:.2f}%")
sys.exit(0 if diff <= 1e-4 else 1)
