"""Text in, text out: a tokenizer stored in the artifact, generate_text / chat with sampling,
stop strings and EOS, streaming, and `sbc generate --prompt / --chat`.

The tiny reference model is compiled once with a small BPE tokenizer trained here
(tests/text_model.py). Its weights are random, so its text is gibberish (often invalid UTF-8
bytes): the checks compare text generation with token generation, not with expected prose.
"""

import json
import zipfile

import numpy as np
import pytest

import sbc
from sbc.errors import ArtifactError, CompileError, InputError
from sbc.module import Module
from sbc.runtimes.session import sample
from sbc.runtimes.tokenizer import REPLACEMENT, load_tokenizer_folder
from tests.text_model import CHATML, make_tokenizer, save_tokenizer_folder, text_artifact
from tests.test_cli import cli

TEXTS = ["Hello world! Café crème brûlée.", "日本語のテキスト", "Zoë smiles 🙂 once.",
         "The quick brown fox jumps over the lazy dog."]
PROMPT = "Spiking neurons fire"


@pytest.fixture(scope="module")
def artifact(tiny_onnx):
    return text_artifact(str(tiny_onnx))


@pytest.fixture(scope="module")
def module(artifact):
    return sbc.load(artifact)


def greedy_ids(module, ids, n):
    """Greedy token generation, cut before the first EOS (where text generation stops)."""
    out = [int(t) for t in module.session().generate(np.array([ids]), n)[0]]
    eos = [i for i, t in enumerate(out) if t in module.tokenizer.eos_token_ids]
    return out[:eos[0]] if eos else out


def without_tokenizer(module, path):
    """The same compiled model saved without its tokenizer."""
    manifest = {k: v for k, v in module.manifest.items() if k != "tokenizer"}
    files = {n: b for n, b in module.files.items() if not n.startswith("tokenizer/")}
    Module(module.library, module.params, manifest, files, lazy=True).save(path)
    return path


# -- the tokenizer -----------------------------------------------------------------------------

def test_tokenizer_round_trips_and_streams_whole_characters(module):
    tok = module.tokenizer
    split = 0
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        decoder = tok.decoder()
        pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
        assert "".join(pieces) == text and not any(REPLACEMENT in p for p in pieces)
        split += sum(REPLACEMENT in tok.decode([t]) for t in ids)
    assert split > 0  # some tokens do hold half characters: the streaming check means something


def test_artifact_stores_the_tokenizer_with_checksums(module, artifact, tmp_path):
    files = module.manifest["files"]
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
            "tokenizer/generation_config.json"} <= set(files)
    assert module.manifest["tokenizer"]["vocab_size"] == module.tokenizer.vocab_size <= 256
    eos = {module.tokenizer.backend.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert module.tokenizer.eos_token_ids == eos
    again = tmp_path / "again.sbc"
    module.save(again)  # save -> load keeps it
    reloaded = sbc.load(again).tokenizer
    assert reloaded.encode(TEXTS[0]) == module.tokenizer.encode(TEXTS[0])
    assert reloaded.chat_template == CHATML
    # a changed tokenizer member is a corrupt artifact, like any other member
    damaged = tmp_path / "damaged.sbc"
    with zipfile.ZipFile(again) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "tokenizer/tokenizer_config.json":
                data = data.replace(b"im_end", b"im_END")
            dst.writestr(item, data)
    with pytest.raises(ArtifactError, match="checksum mismatch in tokenizer/tokenizer_config"):
        sbc.load(damaged)


def test_chat_template_and_qwen2_files_load_as_transformers_loads_them(module, tmp_path):
    """The chat template renders as transformers renders it; a Qwen2-style folder (vocab.json
    + merges.txt + added_tokens.json) encodes as transformers' Qwen2Tokenizer does."""
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
    folder = save_tokenizer_folder(tmp_path / "hf")
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    ours = module.tokenizer.apply_chat_template(messages)
    assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.startswith("<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n")
    assert ours.endswith("<|im_start|>assistant\n")

    qwen = tmp_path / "qwen"
    qwen.mkdir()
    tok = make_tokenizer()
    tok.model.save(str(qwen))  # vocab.json + merges.txt
    extra = tok.get_vocab_size()
    (qwen / "added_tokens.json").write_text(json.dumps({"<|extra|>": extra, "<|im_end|>": 2}))
    (qwen / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    ours = load_tokenizer_folder(qwen)
    theirs = Qwen2Tokenizer(vocab=str(qwen / "vocab.json"), merges=str(qwen / "merges.txt"),
                            eos_token="<|im_end|>")
    theirs.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    for text in TEXTS + ["<|extra|> it's   the fox's state"]:  # only characters in CORPUS
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert ours.encode("<|extra|>") == [extra] and ours.vocab_size == extra + 1
    assert ours.eos_token_ids == {2}


def test_bad_tokenizer_folders_are_refused_at_compile_time(tiny_onnx, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    big_tok = make_tokenizer(vocab_size=300, all_bytes=True)
    big = save_tokenizer_folder(tmp_path / "big", big_tok, chat_template="{% for m in messages %}")
    for folder, error, fragment in [
            (broken, InputError, "tokenizer.json does not load"),
            (tmp_path / "empty", InputError, "no tokenizer files"),
            (tmp_path / "missing", InputError, "must be a folder"),
            (big, InputError, "chat template does not parse")]:
        with pytest.raises(error, match=fragment) as info:
            sbc.compile(tiny_onnx, tokenizer=folder)
        assert "\n" not in str(info.value)
    save_tokenizer_folder(big, big_tok)  # a good template: now the vocabulary is what is wrong
    with pytest.raises(CompileError, match=r"tokenizer has 300 tokens, more than the "
                                           r"model's vocabulary of 256"):
        sbc.compile(tiny_onnx, tokenizer=big)


# -- generation ------------------------------------------------------------------------------

def test_greedy_text_is_the_decoded_greedy_tokens(module):
    tok = module.tokenizer
    ids = greedy_ids(module, tok.encode(PROMPT), 40)
    generation = module.session().text_generation(PROMPT, 40)
    text = "".join(generation.pieces())
    assert text == tok.decode(ids)
    assert generation.token_ids == ids
    assert generation.finish_reason == ("stop" if len(ids) < 40 else "length")
    # streamed pieces add up to the same text
    assert "".join(module.session().generate_text(PROMPT, 40, stream=True)) == text
    # a session continues from its state, as generate does; reset starts over
    session = module.session()
    assert session.generate_text(PROMPT, 40) == text
    session.reset()
    assert session.generate_text(PROMPT, 40) == text


def test_stop_strings_are_cut_even_across_tokens(module):
    pieces = list(module.session().generate_text(PROMPT, 60, stream=True))
    text = "".join(pieces)
    # a stop string made of the end of one piece and the start of the next
    i = next(i for i in range(len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    expected = text[:text.find(stop)]
    session = module.session()
    generation = session.text_generation(PROMPT, 60, stop=["never there", stop])
    streamed = list(generation.pieces())
    assert "".join(streamed) == expected and generation.finish_reason == "stop"
    assert module.session().generate_text(PROMPT, 60, stop=stop) == expected


def test_eos_tokens_end_generation(module, tmp_path):
    """An artifact whose generation_config names the third greedy token as EOS."""
    tok = module.tokenizer
    prompt_ids = tok.encode(PROMPT)
    ids = [int(t) for t in module.session().generate(np.array([prompt_ids]), 8)[0]]
    eos = ids[2]
    files = dict(module.files)
    files["tokenizer/generation_config.json"] = json.dumps({"eos_token_id": [eos]}).encode()
    path = tmp_path / "eos.sbc"
    Module(module.library, module.params, module.manifest, files, lazy=True).save(path)
    stopping = sbc.load(path)
    assert eos in stopping.tokenizer.eos_token_ids
    generation = stopping.session().text_generation(PROMPT, 8)
    assert "".join(generation.pieces()) == tok.decode(ids[:ids.index(eos)])
    assert generation.finish_reason == "stop" and generation.completion_tokens == ids.index(eos) + 1


def test_chat_renders_the_template_and_starts_over(module):
    messages = [{"role": "user", "content": "Hello 🙂"}]
    tok = module.tokenizer
    ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
    expected = tok.decode(greedy_ids(module, ids, 30))
    session = module.session()
    session.prefill(np.array([[5, 6, 7]]))  # chat ignores earlier state: messages are all
    assert session.chat(messages, 30) == expected
    assert "".join(session.chat(messages, 30, stream=True)) == expected
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                          {"type": "text", "text": "🙂"}]}]
    assert module.session().chat(parts, 30) == expected


def test_seeded_sampling_is_reproducible(module):
    settings = dict(temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.3)
    runs = [module.session().generate_text(PROMPT, 30, seed=7, **settings) for _ in range(2)]
    assert runs[0] == runs[1]
    tokens = [module.session().generate(np.array([[1, 2, 3]]), 30, seed=7, **settings)
              for _ in range(2)]
    assert np.array_equal(*tokens)


def test_sampling_semantics():
    rng = np.random.default_rng(0)
    # repetition penalty, as Hugging Face: positive logits divided, negative multiplied
    logits = np.array([[2.0, -1.0, 1.5, -1.5]])
    seen = np.array([[True, True, False, False]])
    assert sample(logits, 0.0, None, rng)[0] == 0
    assert sample(logits, 0.0, None, rng, repetition_penalty=2.0, seen=seen)[0] == 2
    neg = np.array([[-1.0, -1.5]])
    assert sample(neg, 0.0, None, rng, repetition_penalty=2.0, seen=np.array([[True, False]]))[0] == 1
    # top_p: the smallest set of most likely tokens whose probability reaches top_p
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    drawn = {int(sample(logits, 1.0, None, rng, top_p=0.6)[0]) for _ in range(200)}
    assert drawn == {0, 1}
    assert {int(sample(logits, 1.0, None, rng, top_p=0.5)[0]) for _ in range(50)} == {0}
    assert {int(sample(logits, 1.0, 2, rng)[0]) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty"), ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"stop": [""]}, "stop"), ({"stop": 3}, "stop"),
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"prompt": 3.5}, "prompt"),
    ({"prompt": ""}, "empty"), ({"prompt": [300]}, "outside the model's vocabulary")])
def test_bad_arguments_are_one_line_errors(module, kwargs, fragment):
    args = dict({"prompt": PROMPT, "max_new_tokens": 4}, **kwargs)
    with pytest.raises(InputError, match=fragment) as info:
        module.session().generate_text(args.pop("prompt"), args.pop("max_new_tokens"), **args)
    assert "\n" not in str(info.value)


def test_bad_chats_and_missing_tokenizers_are_one_line_errors(module, tmp_path):
    for messages, fragment in [("hi", "non-empty list"), ([{"role": "user"}], "'content'"),
                               ([{"content": "x"}], "'role'"),
                               ([{"role": "user", "content": [{"type": "image"}]}], "text")]:
        with pytest.raises(InputError, match=fragment):
            module.session().chat(messages)
    with pytest.raises(InputError, match="batch=1"):
        module.session(batch=2).generate_text(PROMPT)
    bare = sbc.load(without_tokenizer(module, tmp_path / "bare.sbc"))
    assert bare.tokenizer is None
    with pytest.raises(InputError, match="no tokenizer: compile it with .*--tokenizer DIR"):
        bare.session().generate_text(PROMPT)


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_generate_prompt_and_chat(module, artifact, capsys, tmp_path):
    code, out, err = cli(capsys, "generate", artifact, "--prompt", PROMPT, "-n", "24")
    assert code == 0, err
    assert out == module.session().generate_text(PROMPT, 24) + "\n"
    assert "new tokens" in err
    code, out, err = cli(capsys, "generate", artifact, "--prompt", "Hello 🙂", "--chat",
                         "--system", "Be brief.", "-n", "24", "--temperature", "0.7",
                         "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "3")
    assert code == 0, err
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 🙂"}]
    assert out == module.session().chat(messages, 24, temperature=0.7, top_p=0.9,
                                        repetition_penalty=1.2, seed=3) + "\n"
    full = module.session().generate_text(PROMPT, 24)
    stop = full[5:8]
    code, out, _ = cli(capsys, "generate", artifact, "--prompt", PROMPT, "-n", "24", "--stop", stop)
    assert code == 0 and out == full[:full.find(stop)] + "\n"
    code, out, _ = cli(capsys, "generate", artifact, "--prompt-ids", "1,2,3", "-n", "4",
                       "--top-p", "0.5", "--temperature", "1", "--seed", "1")
    assert code == 0 and len(out.strip().split(",")) == 4


def test_cli_generate_errors(module, artifact, capsys, tmp_path):
    bare = without_tokenizer(module, tmp_path / "bare.sbc")
    for args, fragment in [([bare, "--prompt", "hi"], "has no tokenizer"),
                           ([artifact, "--prompt", "hi", "--top-p", "2"], "top_p"),
                           ([artifact, "--prompt-ids", "1,2", "--chat"], "--chat"),
                           ([artifact, "--prompt", "hi", "--system", "x"], "--system goes with"),
                           ([artifact, "--prompt", "hi", "--stop", ""], "stop")]:
        code, out, err = cli(capsys, "generate", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert "--tokenizer DIR" in cli(capsys, "generate", bare, "--prompt", "hi")[2]
