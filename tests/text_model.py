"""A small byte-level BPE tokenizer saved as a Hugging Face folder, and the tiny reference
model compiled with it: what the text generation and server tests run on.

The tokenizer is trained here (the `tokenizers` library) on a few sentences, with an
alphabet of only the bytes seen, so that it fits the tiny model's 256-token vocabulary. Two
characters occur once in the corpus (🙂, ë), below the merge threshold, so their bytes stay
separate tokens: decoding them one token at a time gives half characters, which streaming
must never emit. The compiled artifact is built once per test process (compiling takes
seconds) and shared by the test modules that need it.
"""

from __future__ import annotations

import atexit
import functools
import json
import pathlib
import shutil
import tempfile

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog.",
          "Hello world! Café crème brûlée, s'il vous plaît.",
          "Spiking neurons fire when the membrane crosses a threshold.",
          "日本語のテキストも少し。",
          "Linear attention keeps a constant-size state across the sequence."] * 3 + [
    "Zoë smiles 🙂 once."]
CHATML = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_tokenizer(vocab_size: int = 220, all_bytes: bool = False):
    """A trained byte-level BPE (a tokenizers.Tokenizer) of at most `vocab_size` tokens; its
    alphabet is the bytes seen in CORPUS, or all 256 (more than the tiny model's vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if all_bytes else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def save_tokenizer_folder(folder, tok=None, *, chat_template: str | None = CHATML,
                          generation_eos: bool = True) -> pathlib.Path:
    """`tok` (default make_tokenizer()) as a Hugging Face folder: tokenizer.json,
    tokenizer_config.json (chat template, bos/eos tokens) and generation_config.json."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tok or make_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
              "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_eos:
        eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return folder


@functools.lru_cache(maxsize=2)
def text_artifact(onnx_path: str) -> pathlib.Path:
    """The tiny reference model (`onnx_path`: conftest's tiny_onnx, exported once per
    session) compiled with the test tokenizer and saved as a .sbc file, once per process
    (removed at exit)."""
    import sbc
    work = pathlib.Path(tempfile.mkdtemp(prefix="sbc-text-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    folder = save_tokenizer_folder(work / "tokenizer")
    module = sbc.compile(onnx_path, tokenizer=folder, cache=False)
    module.save(work / "tiny-text.sbc")
    return work / "tiny-text.sbc"
