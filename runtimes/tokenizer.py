"""Text in, text out: a Hugging Face tokenizer stored in the artifact, its chat template, and
the incremental pieces generation streams.

A tokenizer is the tokenizer files of a Hugging Face folder, kept byte for byte as artifact
members under `tokenizer/` (so the artifact's checksums cover them):

    tokenizer.json                     the `tokenizers` library's own format (most models), or
    vocab.json + merges.txt            a byte-level BPE as Qwen2's slow tokenizer writes it
    (+ added_tokens.json)              (built here as transformers' Qwen2Tokenizer builds it)
    tokenizer_config.json              chat_template, bos/eos/unk/pad tokens, added tokens
    special_tokens_map.json            special tokens (older folders)
    chat_template.jinja / .json        the chat template where newer folders keep it
    generation_config.json             eos_token_id (one or several): where generation stops

Encoding and decoding are the `tokenizers` library's; chat templates are rendered with Jinja2
in a sandbox as transformers renders them (`messages`, `add_generation_prompt`, the special
tokens as variables, `raise_exception`, `tojson`, `strftime_now`). A chat template is code
from the model's authors: the sandbox keeps it from reaching Python internals.

IncrementalDecoder turns tokens into text as they come without ever emitting a broken UTF-8
character (a byte-level token may hold half of one); StopStrings holds back text that may be
the start of a stop string, so a stop string is never emitted, even when it spans tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers

from sbc.errors import ArtifactError, InputError

MEMBER_PREFIX = "tokenizer/"
TOKENIZER_JSON, VOCAB, MERGES, ADDED = "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json"
CONFIG, SPECIAL_MAP, GENERATION = "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"
TEMPLATE_JINJA, TEMPLATE_JSON = "chat_template.jinja", "chat_template.json"
FILES = (TOKENIZER_JSON, VOCAB, MERGES, ADDED, CONFIG, SPECIAL_MAP, GENERATION, TEMPLATE_JINJA,
         TEMPLATE_JSON)
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX)
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
               r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
REPLACEMENT = "\ufffd"  # what decoding yields for an incomplete UTF-8 sequence
MAX_PENDING = 8  # tokens held back for an incomplete character; past that it is invalid bytes
HOW_TO_ATTACH = ("compile it with `sbc compile MODEL --tokenizer DIR` (DIR: a Hugging Face "
                 "folder with tokenizer.json, or vocab.json + merges.txt)")


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the folder holds tokenizer files sbc can read (a checkpoint folder may not)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, TOKENIZER_JSON)) or all(
        os.path.isfile(os.path.join(path, n)) for n in (VOCAB, MERGES))


def read_tokenizer_folder(path: str | os.PathLike) -> dict[str, bytes]:
    """The tokenizer files of a Hugging Face folder (model or checkpoint), by name."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputError(f"{path}: the tokenizer must be a folder (a Hugging Face model or "
                         f"checkpoint folder with tokenizer.json, or vocab.json + merges.txt)")
    if not has_tokenizer(path):
        raise InputError(f"{path}: no tokenizer files here (expected tokenizer.json, or "
                         f"vocab.json + merges.txt)")
    files = {}
    for name in FILES:
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                files[name] = f.read()
    return files


def load_tokenizer_folder(path: str | os.PathLike) -> "TextTokenizer":
    """A folder's tokenizer, fully checked: InputError (one line) if it does not load."""
    return TextTokenizer.from_files(read_tokenizer_folder(path), os.fspath(path))


def tokenizer_from_members(members: dict[str, bytes]) -> "TextTokenizer | None":
    """The tokenizer stored in an artifact's members, or None when it has none."""
    files = {n[len(MEMBER_PREFIX):]: b for n, b in members.items() if n.startswith(MEMBER_PREFIX)}
    if not files:
        return None
    try:
        return TextTokenizer.from_files(files, "the artifact's tokenizer")
    except InputError as e:  # it loaded when compiled: the artifact is not what was written
        raise ArtifactError(str(e)) from e


class TextTokenizer:
    """encode / decode, the chat template, the special tokens, and where generation stops."""

    def __init__(self, backend: tokenizers.Tokenizer, files: dict[str, bytes], where: str):
        self.backend, self.files, self.where = backend, dict(files), where
        config = _json_member(files, CONFIG, where)
        special_map = _json_member(files, SPECIAL_MAP, where)
        self.special_tokens = {name: token for name in SPECIAL_NAMES
                               if (token := _token_text(config.get(name, special_map.get(name))))}
        vocab = backend.get_vocab(with_added_tokens=True)
        # ids the tokenizer can produce: 0 .. vocab_size - 1 (the model's vocab must hold them)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.eos_token_ids = self._eos_ids(vocab, _json_member(files, GENERATION, where))
        self.chat_template = _chat_template(files, config, where)
        self._template = _compile_template(self.chat_template, where) if self.chat_template else None

    @classmethod
    def from_files(cls, files: dict[str, bytes], where: str) -> "TextTokenizer":
        if TOKENIZER_JSON in files:
            backend = _load_tokenizer_json(files[TOKENIZER_JSON], where)
        elif VOCAB in files and MERGES in files:
            backend = _load_vocab_merges(files, where)
        else:
            raise InputError(f"{where}: no tokenizer.json, nor vocab.json + merges.txt")
        return cls(backend, files, where)

    @property
    def digest(self) -> str:
        """sha256 over the files' names and bytes: what the compile cache keys on."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()

    def members(self) -> dict[str, bytes]:
        """The artifact members that store this tokenizer."""
        return {MEMBER_PREFIX + n: b for n, b in sorted(self.files.items())}

    def summary(self) -> dict:
        """What the manifest says of the tokenizer (the members carry the tokenizer itself)."""
        return {"files": sorted(self.files), "vocab_size": self.vocab_size,
                "eos_token_ids": sorted(self.eos_token_ids),
                "chat_template": self.chat_template is not None}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; add_special_tokens: what the tokenizer adds around a text
        (a BOS, for models whose tokenizer.json says so); not for rendered chats, which hold
        their special tokens already (as transformers' apply_chat_template does)."""
        if not isinstance(text, str):
            raise InputError(f"text to encode must be a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """The chat rendered as the model was trained to read it (a string to encode)."""
        if self._template is None:
            raise InputError(f"{self.where} has no chat_template (tokenizer_config.json or "
                             f"chat_template.jinja); give a plain prompt instead")
        messages = check_messages(messages)
        try:
            return self._template.render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except jinja2.TemplateError as e:  # raise_exception("roles must alternate"), ...
            raise InputError(f"the chat template refused the messages: {e}") from e

    def decoder(self) -> "IncrementalDecoder":
        return IncrementalDecoder(self)

    def _eos_ids(self, vocab: dict[str, int], generation: dict) -> frozenset[int]:
        """generation_config.json's eos_token_id (an id or a list) and the eos_token's id."""
        ids = generation.get("eos_token_id")
        ids = [ids] if isinstance(ids, int) and not isinstance(ids, bool) else ids or []
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in ids):
            raise InputError(f"{self.where}: generation_config.json's eos_token_id must be an "
                             f"integer or a list of integers, got {generation.get('eos_token_id')!r}")
        eos = self.special_tokens.get("eos_token")
        if eos is not None and eos in vocab:
            ids = [*ids, vocab[eos]]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InputError(f"{self.where}: eos token id {bad[0]} is outside the tokenizer's "
                             f"{self.vocab_size} tokens")
        return frozenset(ids)


def check_messages(messages) -> list[dict]:
    """Chat messages as templates read them: [{"role": str, "content": str}, ...]. OpenAI's
    content as a list of text parts is joined into one string."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {\"role\": ..., \"content\": ...}")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"message {i} must be a dict with a string 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": "..."}]
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise InputError(f"message {i}: only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InputError(f"message {i}: 'content' must be a string, got "
                             f"{type(content).__name__}")
        checked.append({**m, "content": content})
    return checked


class IncrementalDecoder:
    """Text of a growing list of tokens, piece by piece: the concatenated pieces equal
    decode(all tokens). A piece is emitted only once it ends in a complete character: tokens
    that end mid-character (a byte-level BPE may split one) wait for the rest of it. Decoding
    runs over a short window (the tokens since the last piece, plus the piece before them, so
    that decoders that treat a first token specially see the same context)."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # tokens already turned into emitted text

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        pending = len(self.ids) - self.read
        if len(text) > len(before) and (not text.endswith(REPLACEMENT) or pending >= MAX_PENDING):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back (an incomplete character at the end, as decode gives it)."""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(before):]


class StopStrings:
    """Cuts text at the first stop string. Text that could be the beginning of a stop string
    is held back until it is known not to be, so no part of a stop string is ever emitted."""

    def __init__(self, stops):
        self.stops = list(stops)
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The text that can be emitted now; sets `stopped` when a stop string was found."""
        if self.stopped:
            return ""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            emit, self.pending = self.pending[:min(found)], ""
            return emit
        hold = self._held_back()
        emit = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return emit

    def flush(self) -> str:
        emit, self.pending = ("" if self.stopped else self.pending), ""
        return emit

    def _held_back(self) -> int:
        """The longest end of the pending text that begins some stop string."""
        for n in range(min(len(self.pending), max((len(s) for s in self.stops), default=1) - 1),
                       0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


def check_stop(stop) -> list[str]:
    """Stop strings: None, one string or a list of non-empty strings."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise InputError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return list(stops)


# -- loading ------------------------------------------------------------------------------

def _load_tokenizer_json(data: bytes, where: str) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exceptions with serde's message
        raise InputError(f"{where}: tokenizer.json does not load ({_first_line(e)})") from e


def _load_vocab_merges(files: dict[str, bytes], where: str) -> tokenizers.Tokenizer:
    """A byte-level BPE from vocab.json + merges.txt, as transformers' Qwen2Tokenizer builds
    it (NFC, Qwen2's split, byte-level), plus the added tokens at their stated ids."""
    vocab = _json_member(files, VOCAB, where)
    if not vocab or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise InputError(f"{where}: vocab.json must map tokens to integer ids")
    merges = []
    for n, line in enumerate(files[MERGES].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise InputError(f"{where}: merges.txt line {n} is not two tokens: {line[:40]!r}")
        merges.append((pair[0], pair[1]))
    try:
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(
            vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
            end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    except Exception as e:
        raise InputError(f"{where}: vocab.json + merges.txt do not load ({_first_line(e)})") from e
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    _add_tokens(backend, _added_tokens(files, where), where)
    return backend


def _added_tokens(files: dict[str, bytes], where: str) -> dict[int, tuple[str, bool]]:
    """id -> (text, special) from added_tokens.json and tokenizer_config's added_tokens_decoder."""
    added = {}
    for text, i in _json_member(files, ADDED, where).items():
        added[i] = (text, True)
    for i, entry in (_json_member(files, CONFIG, where).get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added[int(i)] = (entry["content"], bool(entry.get("special", True)))
    return added


def _add_tokens(backend: tokenizers.Tokenizer, added: dict[int, tuple[str, bool]], where: str):
    """Add tokens in id order (each new one takes the next id) and check they got their ids."""
    for i in sorted(added):
        text, special = added[i]
        token = AddedToken(text, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        if backend.token_to_id(text) != i:
            raise InputError(f"{where}: added token {text!r} should have id {i} but gets "
                             f"{backend.token_to_id(text)} (ids must follow the vocabulary)")


def _json_member(files: dict[str, bytes], name: str, where: str) -> dict:
    if name not in files:
        return {}
    try:
        value = json.loads(files[name].decode("utf-8"))
    except ValueError as e:
        raise InputError(f"{where}: {name} is not valid JSON ({_first_line(e)})") from e
    if not isinstance(value, dict):
        raise InputError(f"{where}: {name} must hold a JSON object")
    return value


def _token_text(value) -> str | None:
    """A special token as tokenizer_config writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(files: dict[str, bytes], config: dict, where: str) -> str | None:
    """The chat template: chat_template.jinja, chat_template.json, or tokenizer_config's
    chat_template (a string, or named templates of which "default" is used)."""
    if TEMPLATE_JINJA in files:
        return files[TEMPLATE_JINJA].decode("utf-8", "replace")
    template = _json_member(files, TEMPLATE_JSON, where).get("chat_template",
                                                             config.get("chat_template"))
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use"...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise InputError(f"{where}: chat_template must be a string (or named templates with a "
                         f"'default')")
    return template


def _compile_template(source: str, where: str) -> jinja2.Template:
    """The template in transformers' sandboxed environment (the same options and globals)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise InputError(f"{where}: the chat template does not parse ({_first_line(e)})") from e


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: Jinja's own escapes HTML characters, which templates do not want
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
