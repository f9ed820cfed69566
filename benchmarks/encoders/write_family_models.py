"""Writes randomly initialised XLM-RoBERTa and ModernBERT folders of
MiniLM's size (384 wide, 6 layers) for benchmarks/encoders/families.sh, with
transformers itself (the models venv: ./.python-models). MiniLM's tokenizer
files are copied in: the benchmark feeds random ids, and gradcache opens a
folder only with a tokenizer.

    ./.python-models benchmarks/encoders/write_family_models.py OUT
"""
import os, shutil, sys

import torch
from transformers import ModernBertConfig, ModernBertModel, XLMRobertaConfig, XLMRobertaModel

out = sys.argv[1]
minilm = os.path.join(os.path.dirname(__file__), "..", "..", ".models", "all-MiniLM-L6-v2")
torch.manual_seed(0)
models = {
    "xlmr": XLMRobertaModel(XLMRobertaConfig(vocab_size=32000, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                             intermediate_size=1536, max_position_embeddings=514, type_vocab_size=1,
                                             pad_token_id=1), add_pooling_layer=False),
    # ModernBERT-base's proportions at MiniLM's width: head width 64,
    # gated MLP of 1.5x (1152 -> 576 after the gate), global attention
    # every third layer, a 128-token window.
    "modernbert": ModernBertModel(ModernBertConfig(vocab_size=32000, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                                   intermediate_size=576, max_position_embeddings=8192, pad_token_id=0,
                                                   embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1,
                                                   reference_compile=False)),
}
for name, model in models.items():
    path = os.path.join(out, name)
    model.save_pretrained(path, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(minilm, f), path)
    print(path)
