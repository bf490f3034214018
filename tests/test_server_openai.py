"""A live server on 127.0.0.1 driven by the official `openai` client."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .conftest import LiveServer

pytestmark = pytest.mark.slow
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def kv_slots_used(app: str = "raylight") -> int:
    """KV slots in use once the engine settles (finished requests free theirs within a step)."""
    from ray import serve

    engine = serve.get_deployment_handle("engine-0", app)
    for _ in range(50):
        used = engine.load.remote().result().kv_slots_used
        if used == 0:
            return 0
        time.sleep(0.1)
    return used


def test_models_and_completions(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    out = client.completions.create(model=MODEL, prompt="hello world", max_tokens=12,
                                    temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    assert out.choices[0].finish_reason == "length"
    usage = out.usage
    assert usage.completion_tokens == 12 and usage.total_tokens == usage.prompt_tokens + 12
    streamed = client.completions.create(
        model=MODEL, prompt="hello world", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(streamed)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == out.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_chat_n_logprobs_and_stream_match(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "你好 🌍, say something"}]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, n=2,
                                         temperature=1.0, seed=3, logprobs=True,
                                         top_logprobs=2)  # fmt: skip
    assert len(out.choices) == 2
    for choice in out.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    greedy = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                            temperature=0)  # fmt: skip
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                            temperature=0, stream=True)  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == greedy.choices[0].message.content


def test_stop_string_cuts_text(client: openai.OpenAI) -> None:
    base = client.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text  # fmt: skip
    stop = base[3:5]
    cut = client.completions.create(model=MODEL, prompt="abc", max_tokens=16, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})  # fmt: skip
    assert cut.choices[0].text == base[: base.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_json_and_server_keeps_serving(server: str) -> None:
    cases = [
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 9}, 400,
         "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": [5] * 300, "max_tokens": 1}, 400,
         "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": [5] * 300, "stream": True}, 400,
         "prompt"),  # refused before the stream starts, not inside it
        ("/v1/completions", {"model": MODEL, "prompt": [5] * 200, "max_tokens": 100}, 400,
         "max_tokens"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model"),
    ]  # fmt: skip
    for path, body, status, param in cases:
        r = httpx.post(server + path, json=body, timeout=30)
        assert r.status_code == status, (path, body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    r = httpx.get(server + "/no/such/route")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(server + "/v1/completions", json={"model": MODEL, "prompt": "ok",
                                                      "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200
    assert kv_slots_used() == 0


def test_disconnect_mid_stream_frees_slots(server: str) -> None:
    """Hanging up mid-stream aborts the request in the engine (its metrics status is 499)."""
    from .test_server_ops import sample, scrape

    body = {"model": MODEL, "prompt": "long", "max_tokens": 200, "stream": True,
            "extra": 1, "ignore_eos": True}  # fmt: skip
    before = scrape(server)
    for _ in range(3):
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            next(lines)  # two events in, then hang up
    assert kv_slots_used() == 0
    time.sleep(0.2)
    after = scrape(server)
    labels = {"endpoint": "completions", "status": "499"}
    closed = sample(after, "raylight_requests_total", **labels)
    assert closed - sample(before, "raylight_requests_total", **labels) == 3
    tokens = sample(after, "raylight_generation_tokens_total")
    assert tokens - sample(before, "raylight_generation_tokens_total") < 3 * 200


def test_32_concurrent_streams_equal_sequential(server: str, client: openai.OpenAI) -> None:
    import asyncio

    prompts = [[(7 * i + j) % 2000 + 3 for j in range(i % 9 + 2)] for i in range(32)]
    extra = {"ignore_eos": True}
    sequential = [
        client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0,
                                  extra_body=extra).choices[0].text  # fmt: skip
        for p in prompts
    ]

    async def streamed() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)

        async def one(p: list[int]) -> str:
            stream = await aclient.completions.create(
                model=MODEL, prompt=p, max_tokens=12, temperature=0, stream=True, extra_body=extra
            )
            return "".join([c.choices[0].text async for c in stream if c.choices])

        return await asyncio.gather(*(one(p) for p in prompts))

    assert asyncio.run(streamed()) == sequential
    assert kv_slots_used() == 0


def test_multibyte_text_streams_like_non_streaming(client: openai.OpenAI) -> None:
    non_ascii = 0
    for prompt in ["春天来了，", "emoji 🌍🚀 and 日本語", "ünïcödé ☃"]:
        args = {"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0.9,
                "seed": 11, "extra_body": {"ignore_eos": True}}  # fmt: skip
        whole = client.completions.create(**args).choices[0].text
        parts = [c.choices[0].text for c in client.completions.create(stream=True, **args)]
        assert "".join(parts) == whole
        non_ascii += any(ord(ch) > 127 for ch in whole)
    assert non_ascii > 0  # the test really streamed multi-byte characters
