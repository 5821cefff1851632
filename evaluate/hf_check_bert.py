"""Checks that a vitnas text export loads in Hugging Face transformers as a
BertForSequenceClassification and gives vitnas's logits.

    vitnas export --supernet runs/bert-spam --arch <uniform arch.json or largest> --out runs/hf-bert
    vitnas eval --model runs/hf-bert --data <test.jsonl> --limit 200 --dump runs/hf-bert/vitnas-logits.safetensors
    torchenv/bin/python evaluate/hf_check_bert.py runs/hf-bert runs/hf-bert/vitnas-logits.safetensors

Also checks that transformers' tokenizer (tokenizer.json in the export)
gives the ids vitnas used for the first texts. Prints the largest absolute
logit difference and the agreement of the predictions; exits non-zero above
1e-4.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

model_dir, dump = sys.argv[1], sys.argv[2]
model = BertForSequenceClassification.from_pretrained(model_dir).eval()
ref = load_file(dump)
with torch.no_grad():
    logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                   token_type_ids=torch.zeros_like(ref["input_ids"])).logits
diff = (logits - ref["logits"]).abs().max().item()
agree = (logits.argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()
print(f"{model_dir}: {logits.shape[0]} sequences of {ref['input_ids'].shape[1]} tokens, "
      f"max |logit difference| {diff:.3e}, predictions agree {agree * 100:.2f}%, "
      f"labels {model.config.id2label}")
sys.exit(0 if diff <= 1e-4 else 1)
