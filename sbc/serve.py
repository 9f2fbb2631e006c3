"""`sbc serve`: an OpenAI-compatible HTTP server over a compiled model with a tokenizer.

    POST /v1/completions        {"model", "prompt", "max_tokens", "temperature", "top_p", "stop",
                                 "seed", "stream", ...}  (plus vLLM's top_k, repetition_penalty,
                                 ignore_eos)
    POST /v1/chat/completions   {"model", "messages", ...}: the tokenizer's chat template
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", "active": n, "waiting": m}

Streaming (`"stream": true`) sends server-sent events in OpenAI's chunk format and ends with
`data: [DONE]`; otherwise one JSON response with `usage`. Errors are OpenAI's error object
({"error": {"message", "type", "param", "code"}}) with a 4xx status: bad JSON, wrong field
types, an unknown model, a prompt or max_tokens over the server's limits.

Concurrency: each request gets its own recurrent session (module.session(): a few fixed-size
state arrays). The compiled module runs one call at a time (the CPU runtime serialises calls
with a lock: the Relax VM keeps per-call registers, and each call already uses every core), and
requests cannot share a batched step: a step takes one position for the whole batch, and
requests are at different positions. So one engine thread advances the active requests in
turn, one model call each (a prefill chunk of at most PREFILL_CHUNK tokens, or one decoded
token): requests interleave fairly at token granularity, a long prompt does not hold up the
others for more than a chunk, and the event loop only moves text. At most --max-concurrency
requests are active; later ones wait in order (up to MAX_WAITING, then 429). A client that
disconnects mid-stream has its request dropped at its next turn, which frees its session.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from sbc.errors import InputError, SbcError

PREFILL_CHUNK = 128  # prompt tokens per turn: bounds what one request makes the others wait
MAX_WAITING = 1024  # requests queued beyond --max-concurrency before 429
MAX_BODY = 4 << 20  # bytes of a request body
MAX_STOPS = 4  # stop strings per request, as OpenAI allows
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many run at once."""
    max_tokens: int = 512
    max_prompt_tokens: int = 4096
    max_concurrency: int = 16

    def __post_init__(self):
        for name in ("max_tokens", "max_prompt_tokens", "max_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


class ApiError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# -- the engine: one thread steps every active request in turn -------------------------------

class Job:
    """One request: how to start its generation, and the queue its text goes to (read by
    the request's handler on the event loop)."""

    def __init__(self, start, loop: asyncio.AbstractEventLoop):
        self.start = start  # () -> TextGeneration, called by the engine when the job starts
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.generation = None
        self.cancelled = False  # the client went away: dropped at its next turn

    def put(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed (server shutting down)
            self.cancelled = True


class Engine:
    """Advances active jobs round-robin, one model call each, on its own thread."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: deque[Job] = deque()
        self._running: Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sbc-serve-engine", daemon=True)
        self.dropped = 0  # jobs dropped because their client went away

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cv:
            if len(self._waiting) >= MAX_WAITING:
                raise ApiError(429, f"the server is busy ({MAX_WAITING} requests waiting); "
                                    f"retry later", kind="server_busy")
            self._waiting.append(job)
            self._cv.notify()

    def counts(self) -> tuple[int, int]:
        """(active, waiting) requests."""
        with self._cv:
            return len(self._active) + (self._running is not None), len(self._waiting)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._active and not self._waiting:
                    self._cv.wait()
                if self._stopping:
                    return
                while self._waiting and len(self._active) < self.limits.max_concurrency:
                    self._active.append(self._waiting.popleft())
                job = self._running = self._active.popleft()
            keep = self._advance(job)
            with self._cv:
                self._running = None
                if keep:
                    self._active.append(job)

    def _advance(self, job: Job) -> bool:
        """One model call for `job`; whether it goes on."""
        if job.cancelled:
            job.generation = None  # its session (the state arrays) goes with it
            self.dropped += 1
            return False
        try:
            if job.generation is None:
                job.generation = job.start()
            piece = job.generation.step()
        except SbcError as e:  # e.g. the context would exceed a KV cache
            job.put("error", ApiError(400, str(e)))
            return False
        except Exception as e:  # a bug: the request fails, the server stays up
            traceback.print_exc(file=sys.stderr)
            job.put("error", ApiError(500, f"internal error: {type(e).__name__}: {e}",
                                      kind="server_error"))
            return False
        if piece:
            job.put("text", piece)
        if job.generation.finished:
            job.put("done")
            return False
        return True


# -- requests ----------------------------------------------------------------------------------

@dataclass
class Ask:
    """A checked request: prompt ids, generation settings, how to answer."""
    ids: list[int]
    max_tokens: int
    sampling: dict
    stream: bool
    include_usage: bool


class Server:
    """The endpoints over one module (its tokenizer, limits and engine)."""

    def __init__(self, module, model_name: str, limits: Limits):
        if module.tokenizer is None:
            from sbc.runtimes.tokenizer import HOW_TO_ATTACH
            raise InputError(f"the model has no tokenizer, which serving needs: {HOW_TO_ATTACH}")
        if not module.recurrent:
            raise InputError("the model has no recurrent state: it cannot generate (serve a "
                             "model sbc made recurrent, see `sbc compile --explain`)")
        self.module, self.model_name, self.limits = module, model_name, limits
        self.tokenizer = module.tokenizer
        self.engine = Engine(limits)
        self.created = int(time.time())
        vocab = module.outputs[0][1].shape[-1]
        self.vocab = vocab if isinstance(vocab, int) else None
        certificate = module.recurrent.get("memory_certificate") or {}
        self.max_context = certificate.get("max_context")  # a full attention's KV cache

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app):
            self.engine.start()
            try:
                yield
            finally:
                self.engine.stop()

        routes = [Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/health", self.health, methods=["GET"])]
        app = Starlette(routes=routes, lifespan=lifespan,
                        exception_handlers={HTTPException: _http_error, Exception: _server_error})
        app.state.server = self
        return app

    async def health(self, request: Request) -> JSONResponse:
        active, waiting = self.engine.counts()
        return JSONResponse({"status": "ok", "active": active, "waiting": waiting})

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    def _model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "sbc"}

    async def completions(self, request: Request):
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]  # a batch of one prompt
            ids = self._prompt_ids(prompt)
            req = self._request(body, ids, default_max=COMPLETION_DEFAULT_MAX_TOKENS,
                                max_names=("max_tokens",))
        except ApiError as e:
            return e.response()
        return await self._answer(req, chat=False)

    async def chat_completions(self, request: Request):
        try:
            body = await self._body(request)
            _unsupported(body, tools=None, tool_choice=None, functions=None, function_call=None)
            try:
                text = self.tokenizer.apply_chat_template(body.get("messages"))
            except InputError as e:
                raise ApiError(400, str(e), "messages") from e
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            req = self._request(body, ids, default_max=self.limits.max_tokens,
                                max_names=("max_completion_tokens", "max_tokens"))
        except ApiError as e:
            return e.response()
        return await self._answer(req, chat=True)

    # -- checking a request --------------------------------------------------------------------

    async def _body(self, request: Request) -> dict:
        """The JSON object of the request, for the model served."""
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB")
        try:
            body = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "'model' is required: a string (see /v1/models)", "model")
        if model != self.model_name:
            raise ApiError(404, f"the model '{model}' does not exist; this server serves "
                                f"'{self.model_name}'", "model", code="model_not_found")
        _unsupported(body, n=1, best_of=1, echo=False, suffix=None, logprobs=None,
                     top_logprobs=None, presence_penalty=0, frequency_penalty=0)
        if body.get("logit_bias"):
            raise ApiError(400, "'logit_bias' is not supported", "logit_bias")
        return body

    def _prompt_ids(self, prompt) -> list[int]:
        """A completion's prompt: a string, or a list of token ids."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, list) and prompt and all(_is_int(i) for i in prompt):
            bad = [i for i in prompt if not 0 <= i < (self.vocab or 2**62)]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary "
                                    f"[0, {self.vocab})", "prompt")
            return list(prompt)
        raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt)",
                       "prompt")

    def _request(self, body: dict, ids: list[int], default_max: int,
                 max_names: tuple[str, ...]) -> Ask:
        """The prompt within the limits and every setting checked (one 400 for the first
        field at fault)."""
        from sbc.runtimes.session import check_sampling
        if not ids:
            raise ApiError(400, "the prompt is empty (it encodes to no tokens)", "prompt")
        if len(ids) > self.limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {len(ids)} tokens, more than this server's "
                                f"limit of {self.limits.max_prompt_tokens}", "prompt",
                           code="context_length_exceeded")
        name = next((n for n in max_names if body.get(n) is not None), max_names[-1])
        if self.max_context is not None:  # by default, no more than the context has room for
            default_max = max(1, min(default_max, self.max_context - len(ids)))
        max_tokens = _field(body, name, _is_int, "an integer >= 1",
                            min(default_max, self.limits.max_tokens))
        if max_tokens < 1 or max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"'{name}' must be in [1, {self.limits.max_tokens}] (this "
                                f"server's limit), got {max_tokens}", name)
        if self.max_context is not None and len(ids) + max_tokens > self.max_context:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) and {name} ({max_tokens}) "
                                f"exceed the model's context of {self.max_context} tokens",
                           name, code="context_length_exceeded")
        top_k = _field(body, "top_k", _is_int, "an integer (-1: all tokens)", None)
        sampling = {
            "temperature": _field(body, "temperature", _is_number, "a number", 1.0),
            "top_p": _field(body, "top_p", _is_number, "a number", None),
            "top_k": None if top_k in (-1, 0) else top_k,  # vLLM's -1: no top-k
            "repetition_penalty": _field(body, "repetition_penalty", _is_number, "a number",
                                         None),
            "seed": _field(body, "seed", _is_int, "an integer", None),
            "stop": _stop(body.get("stop")),
            "ignore_eos": _field(body, "ignore_eos", lambda v: isinstance(v, bool),
                                 "true or false", False),  # vLLM's, for benchmarks
        }
        try:
            check_sampling(sampling["temperature"], sampling["top_k"], top_p=sampling["top_p"],
                           repetition_penalty=sampling["repetition_penalty"],
                           seed=sampling["seed"])
        except InputError as e:
            raise ApiError(400, str(e), str(e).split(" ")[0]) from e
        stream = _field(body, "stream", lambda v: isinstance(v, bool), "true or false", False)
        options = _field(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise ApiError(400, "'stream_options.include_usage' must be true or false",
                           "stream_options")
        return Ask(ids, max_tokens, sampling, stream, include_usage)

    # -- answering -----------------------------------------------------------------------------

    async def _answer(self, req: Ask, chat: bool):
        module = self.module

        def start():
            session = module.session(batch=1, chunk=PREFILL_CHUNK)
            return session.text_generation(req.ids, req.max_tokens, **req.sampling)

        job = Job(start, asyncio.get_running_loop())
        try:
            self.engine.submit(job)
        except ApiError as e:
            return e.response()
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if req.stream:
            return StreamingResponse(self._events(job, req, ident, chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text = "".join([piece async for piece in _pieces(job)])
        except ApiError as e:
            return e.response()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": None, "finish_reason": job.generation.finish_reason} if chat else
                  {"index": 0, "text": text, "logprobs": None,
                   "finish_reason": job.generation.finish_reason})
        return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": self.model_name,
                             "choices": [choice], "usage": _usage(job)})

    async def _events(self, job: Job, req: Ask, ident: str, chat: bool):
        """Server-sent events: a chunk per text piece, a last one with the finish reason,
        optionally the usage, then [DONE]. Leaving early (the client went away) cancels."""
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {} if piece is None else {"content": piece}
                if first:
                    delta = {"role": "assistant", "content": ""}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None,
                          "finish_reason": finish}
            return _sse({"id": ident, "object": kind, "created": created,
                         "model": self.model_name, "choices": [choice]})

        try:
            if chat:
                yield chunk(None, None, first=True)
            async for piece in _pieces(job):
                yield chunk(piece, None)
            yield chunk(None, job.generation.finish_reason)
            if req.include_usage:
                yield _sse({"id": ident, "object": kind, "created": created,
                            "model": self.model_name, "choices": [], "usage": _usage(job)})
        except ApiError as e:
            yield _sse(e.body())
        finally:  # closed early (the client went away): the engine drops the job
            job.cancelled = True
        yield "data: [DONE]\n\n"


async def _pieces(job: Job):
    """The job's text pieces as the engine produces them; ApiError if it fails. However
    this ends (done, an error, the client gone: a cancelled task or a closed generator), an
    unfinished job is dropped by the engine at its next turn."""
    try:
        while True:
            kind, value = await job.queue.get()
            if kind == "text":
                yield value
            elif kind == "done":
                return
            else:
                raise value
    finally:
        job.cancelled = True  # a no-op for a finished job: the engine has let it go


def _usage(job: Job) -> dict:
    g = job.generation
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(body: dict, name: str, check, what: str, default):
    """body[name] if it is present and not null (checked), else the default."""
    value = body.get(name)
    if value is None:
        return default
    if not check(value):
        raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(value)[:60]}", name)
    return value


def _stop(stop) -> list[str]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' may hold at most {MAX_STOPS} strings", "stop")
    return stops


def _unsupported(body: dict, **neutral) -> None:
    """Fields this server does not implement are refused unless they ask for nothing
    (their neutral value, or null), rather than silently ignored."""
    for name, value in neutral.items():
        given = body.get(name)
        if given is not None and given != value and not (value is None and given is False):
            raise ApiError(400, f"'{name}' is not supported by this server (only "
                                f"{json.dumps(value)})", name)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and methods: OpenAI's error object rather than Starlette's plain text."""
    return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    traceback.print_exception(exc, file=sys.stderr)
    return ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error").response()


# -- running -----------------------------------------------------------------------------------

def create_app(module, model_name: str = "model", limits: Limits | None = None) -> Starlette:
    """The ASGI app serving `module` (which needs a tokenizer); run it with any ASGI server."""
    return Server(module, model_name, limits or Limits()).app()


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (port 0: any free port); one line if it cannot be had."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be in [0, 65535], got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def serve(path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          limits: Limits | None = None, model_name: str | None = None,
          sha256: str | None = None, num_threads: int | None = None) -> None:
    """Load the artifact and serve it until interrupted (what `sbc serve` runs); num_threads:
    the CPU kernels' threads (sbc.load's)."""
    import uvicorn
    from sbc.module import module_from_artifact
    from sbc.runtimes.artifact import read_artifact
    from sbc.runtimes.tokenizer import HOW_TO_ATTACH, MEMBER_PREFIX
    path = os.fspath(path)
    limits = limits or Limits()
    artifact = read_artifact(path, sha256=sha256)
    if not any(n.startswith(MEMBER_PREFIX) for n in artifact.files):
        raise InputError(f"{path} has no tokenizer, which serving needs: {HOW_TO_ATTACH}")
    sock = listen(host, port)  # before the slow load: a port in use fails at once
    name = model_name or os.path.splitext(os.path.basename(path))[0]
    app = create_app(module_from_artifact(artifact, path, num_threads), name, limits)
    bound = sock.getsockname()[1]
    print(f"sbc: serving '{name}' at http://{host}:{bound}/v1 (max {limits.max_concurrency} "
          f"requests at once)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
