"""`sbc serve`: the OpenAI-compatible server, through the official `openai` client.

The server runs in a thread of the test process (uvicorn on a free port of 127.0.0.1) over
the tiny model compiled with the test tokenizer (tests/text_model.py); one test starts the
real `sbc serve` command. Answers are compared with the same generation run through the
Python API, and 16 concurrent streams with each request served alone.
"""

import asyncio
import http.client
import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

import sbc
from sbc.errors import InputError
from sbc.serve import ApiError, Engine, Job, Limits, _pieces, create_app, listen
from tests.test_cli import SBC, cli
from tests.text_model import text_artifact

MODEL = "tiny-text"
LIMITS = Limits(max_tokens=2048, max_prompt_tokens=64, max_concurrency=16)
PROMPT = "Spiking neurons fire"


@pytest.fixture(scope="module")
def module(tiny_onnx):
    return sbc.load(text_artifact(str(tiny_onnx)))


@pytest.fixture(scope="module")
def server(module):
    """(base URL, the Starlette app) of a server running in a thread."""
    app = create_app(module, MODEL, LIMITS)
    sock = listen("127.0.0.1", 0)
    runner = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    runner.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def post(base: str, path: str, body, raw: bool = False):
    """(status, JSON body) of a POST (body: an object, or bytes sent as they are)."""
    host = base.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=60)
    data = body if raw else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    response = conn.getresponse()
    status, text = response.status, response.read()
    conn.close()
    return status, json.loads(text)


def get(base: str, path: str, method: str = "GET"):
    conn = http.client.HTTPConnection(base.split("//")[1], timeout=60)
    conn.request(method, path)
    response = conn.getresponse()
    status, text = response.status, response.read()
    conn.close()
    return status, json.loads(text)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert get(server[0], "/health") == (200, {"status": "ok", "active": 0, "waiting": 0})


def test_completion_equals_generate_text(client, module):
    expected = module.session().generate_text(PROMPT, 24)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    choice = r.choices[0]
    assert choice.text == expected
    prompt_tokens = len(module.tokenizer.encode(PROMPT))
    assert r.usage.prompt_tokens == prompt_tokens
    assert r.usage.total_tokens == prompt_tokens + r.usage.completion_tokens
    assert choice.finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # token ids as the prompt; stop strings; seeded sampling
    ids = module.tokenizer.encode(PROMPT)
    assert client.completions.create(model=MODEL, prompt=ids, max_tokens=24,
                                     temperature=0).choices[0].text == expected
    stop = expected[4:7]
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                     stop=[stop]).choices[0].text == expected[:expected.find(stop)]
    sampled = [client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, seed=5,
                                         temperature=0.8, top_p=0.9,
                                         extra_body={"top_k": 40, "repetition_penalty": 1.2})
               .choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1] == module.session().generate_text(
        PROMPT, 24, seed=5, temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.2)


def test_chat_completion_and_stream(client, module):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    expected = module.session().chat(messages, 32)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=32,
                                       temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    rendered = module.tokenizer.apply_chat_template(messages)
    assert r.usage.prompt_tokens == len(module.tokenizer.encode(rendered, add_special_tokens=False))
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=32,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    r = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=5,
                                       temperature=0)
    assert r.usage.completion_tokens <= 5


def test_16_concurrent_streams_equal_each_served_alone(client, module, capsys):
    """Greedy, so each stream must equal the same request served alone; the steps of all 16
    interleave (one engine thread). Reports time to first token and tokens/s (the client's
    16 threads share this process with the server: bench/bench_serve.py measures apart)."""
    prompts = [f"{PROMPT} {' '.join(['the lazy dog'] * (i % 5))} {i}" for i in range(16)]
    n = 48
    eos = {"ignore_eos": True}  # all n tokens: the random model often ends early
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=n, temperature=0,
                                       extra_body=eos) for p in prompts]

    def stream(prompt):
        start = time.perf_counter()
        first, pieces = None, []
        for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=n,
                                               temperature=0, stream=True, extra_body=eos,
                                               stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - start
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
            else:
                tokens = chunk.usage.completion_tokens
        return "".join(pieces), first, tokens, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(stream, prompts))
    wall = time.perf_counter() - start
    for r, (text, _, tokens, _) in zip(alone, results):
        assert text == r.choices[0].text and tokens == r.usage.completion_tokens
    ttft = sorted(first for _, first, _, _ in results if first is not None)
    total = sum(tokens for _, _, tokens, _ in results)
    assert total == 16 * n
    with capsys.disabled():
        print(f"\n16 concurrent streams: {total} tokens in {wall:.2f} s = {total / wall:.0f} "
              f"tokens/s; time to first token median {ttft[len(ttft) // 2] * 1e3:.0f} ms, "
              f"max {ttft[-1] * 1e3:.0f} ms")


def test_client_disconnect_frees_the_session(server):
    base, app = server
    engine = app.state.server.engine
    dropped = engine.dropped
    conn = http.client.HTTPConnection(base.split("//")[1], timeout=60)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": LIMITS.max_tokens, "temperature": 0,
            "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    conn.sock.shutdown(2)  # the client goes away mid-stream
    conn.close()
    deadline = time.monotonic() + 20
    while engine.counts() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.counts() == (0, 0) and engine.dropped == dropped + 1


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", {"prompt": "x"}, 400, "'model' is required"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
    ("/v1/completions", {"model": MODEL, "prompt": 3}, 400, "'prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 999]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "empty"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5000}, 400, "limit"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "fox " * 200}, 400, "more than this server"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": [1]}, 400, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": list("abcde")}, 400, "at most"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "'n'"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": "7"}, 400, "seed"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "'tools'"),
])
def test_bad_requests_get_openai_errors(server, path, body, status, fragment):
    code, answer = post(server[0], path, body, raw=isinstance(body, bytes))
    assert code == status, answer
    assert fragment in answer["error"]["message"] and answer["error"]["type"]


def test_unknown_routes_and_the_client_errors(server, client):
    assert get(server[0], "/v2/nothing")[0] == 404
    code, answer = get(server[0], "/v1/completions")
    assert code == 405 and "error" in answer
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.chat.completions.create(model=MODEL, max_tokens=10**6,
                                       messages=[{"role": "user", "content": "x"}])
    assert get(server[0], "/health")[1]["status"] == "ok"  # still serving


def test_engine_fails_one_request_and_serves_the_others(module):
    """A request whose generation fails (an sbc error: 400; anything else: 500) gets its
    error; the requests beside it are served."""
    engine = Engine(Limits(max_concurrency=2))
    engine.start()

    def fail(error):
        def start():
            raise error
        return start

    async def run():
        loop = asyncio.get_running_loop()
        jobs = [Job(fail(InputError("the context is full")), loop),
                Job(lambda: module.session().text_generation(PROMPT, 6), loop),
                Job(fail(RuntimeError("a bug")), loop)]
        for job in jobs:
            engine.submit(job)
        statuses = []
        for job in jobs[::2]:
            with pytest.raises(ApiError) as info:
                [piece async for piece in _pieces(job)]
            statuses.append(info.value.status)
        return statuses, "".join([piece async for piece in _pieces(jobs[1])])

    try:
        statuses, text = asyncio.run(run())
    finally:
        engine.stop()
    assert statuses == [400, 500]
    assert text == module.session().generate_text(PROMPT, 6)


def test_serve_command(tmp_path, capsys, module):
    """The real `sbc serve` (a subprocess, port 0: any free one), answering one request;
    and its one-line errors."""
    artifact = tmp_path / "m.sbc"
    module.save(artifact)
    proc = subprocess.Popen([SBC, "serve", artifact, "--port", "0", "--model-name", "m"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or not (port := re.search(r"http://127\.0\.0\.1:(\d+)/v1", lines[-1])):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # not EOF: the server said where it listens
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port.group(1)}/v1", api_key="x",
                          max_retries=0)
        r = c.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=0)
        assert r.choices[0].text == module.session().generate_text(PROMPT, 8)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    for args, fragment in [(["--max-concurrency", "0"], "max-concurrency"),
                           (["--port", "70000"], "port")]:
        code, _, err = cli(capsys, "serve", artifact, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    bare = tmp_path / "bare.sbc"
    from tests.test_text_generation import without_tokenizer
    code, _, err = cli(capsys, "serve", without_tokenizer(module, bare))
    assert code == 2 and "has no tokenizer" in err and len(err.strip().splitlines()) == 1
