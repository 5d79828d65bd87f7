"""Small language models the tests build themselves (no weights can be downloaded here): a Bloom configuration with
a few layers and random weights, and a byte-level BPE tokenizer trained locally by the tokenizers library, saved as
transformers saves a pretrained model (safetensors, config.json, the fast tokenizer's JSON files)."""

from __future__ import annotations

from pathlib import Path

CORPUS = (
    "the patient reports mild pain in the left knee after a fall",
    "the contract renewal is due in march and needs a signature",
    "please summarise the clinical note in one sentence",
    "the customer asks when the invoice will be corrected",
)


def tiny_bloom(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random-weight Bloom causal LM and its tokenizer in ``folder``; the same arguments give the same files."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(CORPUS) * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=len(fast), hidden_size=hidden, n_layer=layers, n_head=4, bos_token_id=1, eos_token_id=2,
        pad_token_id=3,
    )  # fmt: skip
    model = BloomForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder
