"""Stateful sessions over a recurrent module: streamed prefill, decode, generation.

The module's program maps (tokens [B, T], position, state) -> (logits [B, T, V], state'); a
session keeps the state and position between calls. Prefill streams any number of tokens in
chunks of at most `chunk`, so memory is bounded by the chunk, not by the input length, and
decode is the same program on one token. Both use the module's "prefill" program where it has
one: the same step with the logits computed for the last token only. The state is a few
fixed-size arrays (see the artifact's memory certificate), so it can be saved, loaded and
copied freely.

A model whose positions are an input named `position_ids` (Hugging Face style) gets them from
the session: the absolute positions of each chunk's tokens. Through `module.run` / `step`, the
caller passes them.

With a tokenizer in the artifact (runtimes.tokenizer), `generate_text` and `chat` take and
return text: a TextGeneration advances one model call at a time (a prefill chunk, then a token),
which is what they iterate and what the server (sbc.serve) interleaves across requests.
Sampling follows Hugging Face: repetition penalty, then temperature, top_k, top_p.
"""

from __future__ import annotations

import math
import numbers
import os
import zipfile

import numpy as np

from sbc.errors import InputError
from sbc.ir.dims import Sym, concretize
from sbc.ir.types import numpy_dtype
from sbc.runtimes.artifact import atomic_path
from sbc.runtimes.interop import as_output, output_kind, to_host

STATE_FORMAT = "sbc-session-state-1"
POSITION_IDS = "position_ids"


class Session:
    def __init__(self, module, batch: int = 1, chunk: int = 512):
        if not module.recurrent:
            raise InputError("this module has no recurrent state (its model has no "
                             "LinearAttention/SlidingWindowAttention sbc could make recurrent); "
                             "use module.run on whole sequences")
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
                   for n in (batch, chunk)):
            raise InputError(f"batch and chunk must be integers >= 1, got {batch!r}, {chunk!r}")
        self.module, self.batch, self.chunk = module, batch, chunk
        (self.tokens_name, tokens_type), = module.inputs[:1]
        self.position_ids = dict(module.inputs[1:]).get(POSITION_IDS)
        self.logits_name = module.outputs[0][0]
        batch_dim = tokens_type.shape[0]
        self.symbols = {str(batch_dim): batch} if isinstance(batch_dim, Sym) else {}
        self.reset()

    @property
    def position(self) -> int:
        """Tokens consumed so far."""
        return int(self.state[self.module.recurrent["position"]])

    def reset(self) -> None:
        self.state = self.module.initial_state(self.symbols)

    def prefill(self, ids, output: str | None = None):
        """Consume ids [B, T] (any T >= 1, streamed in chunks); return the logits of the
        last token, [B, V], of the caller's kind (torch ids: torch logits) or `output`'s."""
        return as_output(self._prefill(ids), output_kind([ids], output))

    def decode(self, ids, output: str | None = None):
        """Consume one token per sequence (ids [B] or [B, 1]); return its logits [B, V]."""
        return as_output(self._decode(ids), output_kind([ids], output))

    def _prefill(self, ids) -> np.ndarray:
        ids = self._tokens(ids)
        logits = None
        for start in range(0, ids.shape[1], self.chunk):
            outputs, self.state = self.module.step(self._feeds(ids[:, start:start + self.chunk]),
                                                   self.state, last_only=True)
            logits = outputs[self.logits_name]
        return logits[:, -1]

    def _decode(self, ids) -> np.ndarray:
        ids = self._tokens(np.reshape(np.asarray(to_host(ids)), (self.batch, -1)))
        if ids.shape[1] != 1:
            raise InputError(f"decode takes one token per sequence, got {ids.shape[1]}")
        return self._prefill(ids)

    def generate(self, ids, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None, *, top_p: float | None = None,
                 repetition_penalty: float | None = None) -> np.ndarray:
        """Prefill `ids`, then sample `max_new_tokens` tokens per sequence: greedy when
        temperature is 0, else softmax(logits / temperature) over the top_k most likely and
        the top_p nucleus; repetition_penalty (as in Hugging Face) over prompt and output.
        The tokens [B, max_new_tokens] come back as the ids came (torch: torch)."""
        check_sampling(temperature, top_k, max_new_tokens, top_p=top_p,  # before the prefill
                       repetition_penalty=repetition_penalty, seed=seed)
        kind = output_kind([ids], None)
        ids = self._tokens(ids)
        sampler = Sampler(temperature, top_k, top_p, repetition_penalty, seed, prompt=ids)
        logits = self._prefill(ids)
        out = []
        for _ in range(max_new_tokens):
            token = sampler(logits)
            out.append(token)
            if len(out) < max_new_tokens:
                logits = self._decode(token)
        return as_output(np.stack(out, axis=1) if out else np.zeros((self.batch, 0), np.int64),
                         kind)

    # -- text (the module's tokenizer) -----------------------------------------------------------

    def generate_text(self, prompt, max_new_tokens: int = 128, *, temperature: float = 0.0,
                      top_p: float | None = None, top_k: int | None = None,
                      repetition_penalty: float | None = None, seed: int | None = None,
                      stop=None, stream: bool = False):
        """Continue from the session's state with `prompt` (a string, or token ids) and return
        the generated text; with stream=True, an iterator of text pieces as they are decoded.
        Stops at max_new_tokens, at an EOS token of the tokenizer, or before the first of the
        `stop` strings (never emitted, even when it spans tokens). Sampling as in generate."""
        generation = self.text_generation(prompt, max_new_tokens, temperature=temperature,
                                          top_p=top_p, top_k=top_k, seed=seed, stop=stop,
                                          repetition_penalty=repetition_penalty)
        return generation.pieces() if stream else "".join(generation.pieces())

    def chat(self, messages, max_new_tokens: int = 128, **sampling):
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...]),
        rendered with the tokenizer's chat template. The messages are the whole conversation,
        so the session starts from empty state. Arguments as in generate_text (stream too)."""
        stream = sampling.pop("stream", False)
        generation = self.text_generation(None, max_new_tokens, messages=messages, **sampling)
        return generation.pieces() if stream else "".join(generation.pieces())

    def text_generation(self, prompt, max_new_tokens: int = 128, *, messages=None,
                        temperature: float = 0.0, top_p: float | None = None,
                        top_k: int | None = None, repetition_penalty: float | None = None,
                        seed: int | None = None, stop=None,
                        ignore_eos: bool = False) -> "TextGeneration":
        """A generation to advance one model call at a time (what generate_text iterates and
        the server schedules). Every argument is checked here, before anything runs.
        ignore_eos: generate max_new_tokens whatever comes (benchmarks), as vLLM's option."""
        from sbc.runtimes.tokenizer import HOW_TO_ATTACH, check_stop
        tokenizer = self.module.tokenizer
        if tokenizer is None:
            raise InputError(f"this module has no tokenizer: {HOW_TO_ATTACH}")
        if self.batch != 1:
            raise InputError(f"text generation runs one sequence: use a session with batch=1, "
                             f"not {self.batch}")
        check_sampling(temperature, top_k, max_new_tokens, top_p=top_p,
                       repetition_penalty=repetition_penalty, seed=seed)
        stops = check_stop(stop)
        if messages is not None:
            ids = tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
            self.reset()  # the messages are the whole conversation
        else:
            ids = self._prompt_ids(prompt, tokenizer)
        if not ids:
            raise InputError("the prompt is empty (it encodes to no tokens)")
        sampler = Sampler(temperature, top_k, top_p, repetition_penalty, seed,
                          prompt=np.asarray([ids]))
        eos = frozenset() if ignore_eos else tokenizer.eos_token_ids
        return TextGeneration(self, ids, tokenizer, max_new_tokens, sampler, stops, eos)

    def _prompt_ids(self, prompt, tokenizer) -> list[int]:
        if isinstance(prompt, str):
            return tokenizer.encode(prompt)
        ids = np.asarray(prompt) if isinstance(prompt, (list, tuple, np.ndarray)) else None
        if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise InputError(f"the prompt must be a string or a list of token ids, got "
                             f"{type(prompt).__name__}")
        vocab = self.module.outputs[0][1].shape[-1]
        bad = [int(i) for i in ids if not 0 <= i < (vocab if isinstance(vocab, int) else 2**62)]
        if bad:
            raise InputError(f"prompt token id {bad[0]} is outside the model's vocabulary "
                             f"[0, {vocab})")
        return [int(i) for i in ids]

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the state (and which module it belongs to) atomically as .npz."""
        state = self.module.host_state(self.state)  # on a GPU it lives in device memory
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, __format__=np.array(STATE_FORMAT), __module__=np.array(self._identity()),
                         **{f"s{i}": state[n] for i, n in enumerate(sorted(state))})

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore a state written by save_state for the same module and batch size."""
        identity, loaded = _read_state(os.fspath(path), sorted(self.state))
        if identity != (STATE_FORMAT, self._identity()):
            raise InputError(f"{path}: the state was saved from another model or batch size")
        for name, array in loaded.items():
            # the state held may be device memory (TVM's dtype names): compared by description
            shape, dtype = tuple(self.state[name].shape), np.dtype(str(self.state[name].dtype))
            if array.shape != shape or array.dtype != dtype:
                raise InputError(f"{path}: state '{name}' is {array.dtype}{list(array.shape)}, "
                                 f"expected {dtype}{list(shape)}")
        self.state = loaded

    def _identity(self) -> str:
        source = self.module.manifest.get("source") or {}
        return f"{source.get('sha256')}:{sorted(self.state)}:batch={self.batch}"

    def _feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The step's inputs for a chunk of tokens: the tokens, and their absolute positions
        where the model takes them as an input."""
        feeds = {self.tokens_name: ids}
        if self.position_ids is not None:
            seq = self.module.recurrent.get("sequence_symbol", "seq")
            shape = concretize(list(self.position_ids.shape), {**self.symbols, seq: ids.shape[1]})
            positions = self.position + np.arange(ids.shape[1])  # along the last (sequence) axis
            feeds[POSITION_IDS] = np.broadcast_to(positions, shape).astype(
                numpy_dtype(self.position_ids.dtype))
        return feeds

    def _tokens(self, ids) -> np.ndarray:
        ids = np.asarray(to_host(ids))
        if ids.ndim == 1 and self.batch == 1:
            ids = ids[None]
        expected = self.module.inputs[0][1].dtype
        if ids.ndim != 2 or ids.shape[0] != self.batch or ids.shape[1] < 1:
            raise InputError(f"ids must be [{self.batch}, T] with T >= 1, got shape {list(ids.shape)}")
        if ids.dtype.kind not in "iu":
            raise InputError(f"ids must be integers ({expected}), got {ids.dtype}")
        return ids.astype(numpy_dtype(expected))


def _read_state(path: str, names: list[str]) -> tuple[tuple[str, str], dict[str, np.ndarray]]:
    """(format, module identity) and the state arrays by name from a save_state file. Any
    unreadable file (missing, empty, truncated, garbage, an .npy) is one InputError."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such session state file")
    try:
        with np.load(path, allow_pickle=False) as z:
            identity = (str(z["__format__"]), str(z["__module__"]))
            return identity, {n: z[f"s{i}"] for i, n in enumerate(names)}
    except (OSError, KeyError, ValueError, EOFError, TypeError, AttributeError,
            zipfile.BadZipFile) as e:  # AttributeError, TypeError: an .npy has no `with`/keys
        reason = f"{type(e).__name__}: {e}".splitlines()[0]  # numpy's may run over lines
        raise InputError(f"{path}: not a session state file written by save_state "
                         f"({reason})") from e


def check_sampling(temperature, top_k, max_new_tokens=0, *, top_p=None,
                   repetition_penalty=None, seed=None) -> None:
    """Sampling settings that mean something: NaN or a negative temperature and top_k = 0
    would otherwise be silently taken as greedy or as 'all tokens'."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0: greedy), "
                         f"got {temperature!r}")
    if top_k is not None and not _is_int(top_k, 1):
        raise InputError(f"top_k must be an integer >= 1 (or None: all tokens), got {top_k!r}")
    if not _is_int(max_new_tokens, 0):
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise InputError(f"top_p must be a number in (0, 1] (or None: no nucleus), got {top_p!r}")
    if repetition_penalty is not None and (not _is_real(repetition_penalty)
                                           or not 0 < repetition_penalty < math.inf):
        raise InputError(f"repetition_penalty must be a finite number > 0 (1 or None: none), "
                         f"got {repetition_penalty!r}")
    if seed is not None and not _is_int(seed, 0):
        raise InputError(f"seed must be an integer >= 0 (or None), got {seed!r}")


def _is_int(value, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def sample(logits: np.ndarray, temperature: float, top_k: int | None, rng, *,
           top_p: float | None = None, repetition_penalty: float | None = None,
           seen: np.ndarray | None = None) -> np.ndarray:
    """One token per row of logits [B, V], processed in Hugging Face's order: the repetition
    penalty on the tokens `seen` (bool [B, V]: prompt and output so far), then greedy
    (temperature 0) or temperature, top_k, top_p (the smallest set of most likely tokens
    whose probability reaches top_p) and a draw from `rng`."""
    check_sampling(temperature, top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    if repetition_penalty is not None and repetition_penalty != 1 and seen is not None:
        # a penalty makes seen tokens less likely whatever their sign: divide positive
        # logits, multiply negative ones
        logits = np.where(seen, np.where(logits > 0, logits / repetition_penalty,
                                         logits * repetition_penalty), logits)
    if temperature <= 0:
        return logits.argmax(-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = np.sort(scaled, axis=-1)[:, -top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    if top_p is not None and top_p < 1:
        scaled = _nucleus(scaled, top_p)
    p = np.exp(scaled - scaled.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in p], np.int64)


def _nucleus(scaled: np.ndarray, top_p: float) -> np.ndarray:
    """Hugging Face's TopPLogitsWarper: sorted ascending, drop the tokens whose cumulative
    probability stays <= 1 - top_p; the most likely token always stays."""
    order = np.argsort(scaled, axis=-1, kind="stable")
    ranked = np.take_along_axis(scaled, order, -1)
    p = np.exp(ranked - ranked[:, -1:])
    cumulative = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
    drop = cumulative <= 1 - top_p
    drop[:, -1] = False
    out = np.empty_like(scaled)
    np.put_along_axis(out, order, np.where(drop, -np.inf, ranked), -1)
    return out


class Sampler:
    """The sampling settings of one generation with its random stream and, for the
    repetition penalty, the tokens seen so far (the prompt's and each one sampled)."""

    def __init__(self, temperature=0.0, top_k=None, top_p=None, repetition_penalty=None,
                 seed=None, prompt: np.ndarray | None = None):
        check_sampling(temperature, top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                       seed=seed)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.penalty = repetition_penalty if repetition_penalty not in (None, 1) else None
        self.rng = np.random.default_rng(seed)
        self._prompt = None if prompt is None else np.asarray(prompt)
        self.seen = None  # bool [B, V], made at the first call (V is the logits')

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.penalty is not None and self.seen is None:
            self.seen = np.zeros(logits.shape, bool)
            if self._prompt is not None:
                np.put_along_axis(self.seen, self._prompt.astype(np.int64), True, -1)
        token = sample(logits, self.temperature, self.top_k, self.rng, top_p=self.top_p,
                       repetition_penalty=self.penalty, seen=self.seen)
        if self.seen is not None:
            self.seen[np.arange(len(token)), token] = True
        return token


class TextGeneration:
    """One text generation, advanced one model call at a time by `step()`: a prefill chunk
    of the prompt (the last one also samples the first token), then one decoded token per
    step. Each step returns the text it adds (possibly ""). It ends at max_new_tokens
    ("length"), at an EOS token or a stop string ("stop"); an EOS token and a stop string
    are not part of the text. The server interleaves the steps of many generations."""

    def __init__(self, session: Session, prompt_ids: list[int], tokenizer, max_new_tokens: int,
                 sampler: Sampler, stops: list[str], eos_token_ids=frozenset()):
        from sbc.runtimes.tokenizer import StopStrings
        self.session, self.tokenizer, self.sampler = session, tokenizer, sampler
        self.max_new_tokens, self.eos_token_ids = max_new_tokens, eos_token_ids
        self.prompt_tokens = len(prompt_ids)
        self._pending = list(prompt_ids)  # prompt tokens not yet prefilled
        self._decoder = tokenizer.decoder()
        self._stops = StopStrings(stops)
        self.token_ids: list[int] = []  # generated, EOS excluded
        self.completion_tokens = 0  # sampled, EOS included (what OpenAI's usage counts)
        self.finish_reason = None if max_new_tokens > 0 else "length"
        self._last = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def step(self) -> str:
        """One model call; the text it produced."""
        if self.finished:
            return ""
        if self._pending:
            chunk, self._pending = (self._pending[:self.session.chunk],
                                    self._pending[self.session.chunk:])
            logits = self.session.prefill(np.asarray([chunk], np.int64))
            if self._pending:
                return ""
        else:
            logits = self.session.decode(np.asarray([self._last], np.int64))
        return self._take(int(self.sampler(logits)[0]))

    def pieces(self):
        """The text pieces, as a generator (stops early if the caller stops iterating)."""
        while not self.finished:
            piece = self.step()
            if piece:
                yield piece

    def _take(self, token: int) -> str:
        self.completion_tokens += 1
        if token in self.eos_token_ids:
            self.finish_reason = "stop"
            return self._flush()
        self.token_ids.append(token)
        self._last = token
        text = self._stops.push(self._decoder.push(token))
        if self._stops.stopped:
            self.finish_reason = "stop"
            return text
        if self.completion_tokens >= self.max_new_tokens:
            self.finish_reason = "length"
            return text + self._flush()
        return text

    def _flush(self) -> str:
        """The held-back text at the end: an incomplete character, a possible stop string."""
        text = self._stops.push(self._decoder.flush())
        return text + self._stops.flush()
