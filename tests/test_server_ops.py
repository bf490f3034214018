"""The live server's operational surface: /tokenize, /detokenize, /metrics, API keys, body and
queue limits. Oracles: HF's tokenizer for token ids, the engine's own load report for gauges."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from .conftest import LiveServer

pytestmark = pytest.mark.slow


def engine_load(app: str):  # noqa: ANN201 - a LoadReport
    from ray import serve

    return serve.get_deployment_handle("engine-0", app).load.remote().result()


def settled_kv_used(app: str, within_s: float = 5.0) -> int:
    deadline = time.monotonic() + within_s
    while (used := engine_load(app).kv_slots_used) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return used


def test_tokenize_matches_hf_and_detokenize_inverts(live_server: LiveServer,
                                                    tiny_models: dict) -> None:  # fmt: skip
    hf = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    url = live_server.url
    text = "hello world, 你好 🌍"
    r = httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": text,
                                            "return_token_strs": True})  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens"] == hf.encode(text) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == 256
    assert out["token_strs"] == hf.convert_ids_to_tokens(out["tokens"])
    r = httpx.post(f"{url}/detokenize", json={"tokens": out["tokens"]})
    assert r.status_code == 200 and r.json()["prompt"] == hf.decode(out["tokens"])

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    r = httpx.post(f"{url}/tokenize", json={"messages": messages})
    expected = list(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=False))  # fmt: skip
    assert r.json()["tokens"] == expected
    chat_body = {"model": "tiny", "messages": messages, "max_tokens": 1}
    chat = httpx.post(f"{url}/v1/chat/completions", json=chat_body, timeout=30)
    assert chat.json()["usage"]["prompt_tokens"] == len(expected)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"tokens": [1, 10**6]}, 400, "tokens[1]"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens[0]"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
        ("/tokenize", {"prompt": 5}, 400, "prompt"),
        ("/tokenize", {"messages": [{"role": "user", "content": "x"}],
                       "add_generation_prompt": True, "continue_final_message": True},
         400, "continue_final_message"),
        ("/tokenize", {"model": "other", "prompt": "x"}, 404, "model"),
    ],
)  # fmt: skip
def test_tokenize_errors(live_server: LiveServer, path: str, body: dict, status: int,
                         param: str) -> None:  # fmt: skip
    r = httpx.post(live_server.url + path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def sample(metrics: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"model_name": "tiny", **labels}.items())))
    return metrics.get(key, 0.0)


def test_metrics_count_requests_tokens_and_latencies(live_server: LiveServer) -> None:
    url = live_server.url
    before = scrape(url)
    body = {"model": "tiny", "prompt": "count me", "max_tokens": 7, "ignore_eos": True}
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=30) as r:  # fmt: skip
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    bad = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": -1})
    assert bad.status_code == 400
    time.sleep(0.2)  # the stream records itself after its last byte
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("raylight_requests_total", endpoint="completions", status="200") == 2
    assert delta("raylight_requests_total", endpoint="completions", status="400") == 1
    assert delta("raylight_generation_tokens_total") == 14
    prompt_len = len(httpx.post(f"{url}/tokenize", json={"prompt": "count me"}).json()["tokens"])
    assert delta("raylight_prompt_tokens_total") == 2 * prompt_len
    assert delta("raylight_time_to_first_token_seconds_count") == 2
    assert delta("raylight_inter_token_latency_seconds_count") == 2 * 6
    assert delta("raylight_e2e_request_latency_seconds_count") == 3
    load = engine_load("raylight")
    assert sample(after, "raylight_kv_cache_total_slots", engine="0") == load.kv_slots_total > 0
    assert sample(after, "raylight_num_requests_running", engine="0") >= 0


def test_oversize_body_gets_413(live_server: LiveServer) -> None:
    big = {"model": "tiny", "prompt": "x" * (live_server.max_body_bytes + 10)}
    r = httpx.post(f"{live_server.url}/v1/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(live_server.max_body_bytes // 1000 + 2):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{live_server.url}/v1/completions", content=chunks(),
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    ok = httpx.post(f"{live_server.url}/v1/completions",
                    json={"model": "tiny", "prompt": "x", "max_tokens": 2}, timeout=30)  # fmt: skip
    assert ok.status_code == 200


def test_api_key_guards_everything_but_health_and_metrics(live_server: LiveServer) -> None:
    url, key = live_server.guarded_url, live_server.api_key
    good = {"authorization": f"Bearer {key}"}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": key}):
        r = httpx.get(f"{url}/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        # Refused before the body is read: a malformed body still gets the 401.
        r = httpx.post(f"{url}/v1/completions", content=b"{not json", headers=headers)
        assert r.status_code == 401
        assert httpx.post(f"{url}/tokenize", json={"prompt": "x"}, headers=headers).status_code \
            == 401  # fmt: skip
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=good).status_code == 200
    r = httpx.post(f"{url}/v1/completions", headers=good, timeout=30,
                   json={"model": "tiny", "prompt": "x", "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200, r.text


def test_full_queue_gets_503_and_frees_everything(live_server: LiveServer) -> None:
    """The guarded app runs one sequence at a time and queues at most one more."""
    url = live_server.guarded_url
    headers = {"authorization": f"Bearer {live_server.api_key}"}
    long = {"model": "tiny", "prompt": "busy", "max_tokens": 2000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with httpx.Client(timeout=60, headers=headers) as client:
        with client.stream("POST", f"{url}/v1/completions", json=long) as running:
            # Keep the line iterator: dropping it closes the connection (a disconnect).
            lines = running.iter_lines()
            next(lines)  # first event: this one holds the only sequence
            with client.stream("POST", f"{url}/v1/completions", json=long) as queued:
                assert queued.status_code == 200  # accepted into the queue
                assert engine_load("guarded").num_waiting == 1
                r = client.post(f"{url}/v1/completions", json={**long, "stream": False})
                assert r.status_code == 503, r.text
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
                r = client.post(f"{url}/v1/completions", json=long)  # streaming too, before 200
                assert r.status_code == 503
        # Aborted, not finished: 2 x 2000 tokens would take seconds more.
        assert settled_kv_used("guarded", within_s=1.0) == 0
        load = engine_load("guarded")
        assert load.num_waiting == 0 and load.num_running == 0
        r = client.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x",
                                                       "max_tokens": 2})  # fmt: skip
        assert r.status_code == 200


def test_usage_reports_prefix_cache_hits(live_server: LiveServer) -> None:
    """A conversation's next turn re-sends its history: all of it but the last token is cached."""
    url = live_server.url
    first = [{"role": "user", "content": "remember the number 4711 and tell me a story"}]
    body = {"model": "tiny", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r1 = httpx.post(f"{url}/v1/chat/completions", json={**body, "messages": first}, timeout=30)
    answer = r1.json()["choices"][0]["message"]["content"]
    second = first + [{"role": "assistant", "content": answer},
                      {"role": "user", "content": "and again?"}]  # fmt: skip
    r2 = httpx.post(f"{url}/v1/chat/completions", json={**body, "messages": second}, timeout=30)
    usage1, usage2 = r1.json()["usage"], r2.json()["usage"]
    assert usage1["prompt_tokens_details"]["cached_tokens"] < usage1["prompt_tokens"]
    history = len(httpx.post(f"{url}/tokenize", json={"messages": first}).json()["tokens"])
    assert usage2["prompt_tokens_details"]["cached_tokens"] >= history  # the whole first turn
    r3 = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                    json={**body, "messages": second, "stream": True,
                          "stream_options": {"include_usage": True}})  # fmt: skip
    events = [json.loads(line[6:]) for line in r3.text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    usage3 = events[-1]["usage"]  # the same prompt again: all but its last token are cached
    assert usage3["prompt_tokens_details"]["cached_tokens"] == usage3["prompt_tokens"] - 1
    assert settled_kv_used("raylight") == 0
