"""The OpenAI protocol layer: request validation (400s naming `param`), response shapes checked
against OpenAI's key sets and the official `openai` package's types, and the mapping to the
engine's `SamplingParams`."""

from __future__ import annotations

import json
from typing import Any

import openai.types
import openai.types.chat
import pytest
from pydantic import BaseModel

from raylight.cluster import protocol as p
from raylight.cluster.errors import (
    OpenAIError,
    error_body,
    from_request_rejected,
    from_sampling_params_error,
    from_validation_errors,
    model_not_found,
)
from raylight.cluster.params import TextOptions, detokenize_options_from, sampling_params_from
from raylight.engine.errors import RequestRejectedError
from raylight.engine.sampling_params import SamplingParams, SamplingParamsError

# Key sets from OpenAI's API reference (objects as returned; nullable keys are present).
USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}
COMPLETION_KEYS = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
COMPLETION_CHOICE_KEYS = {"index", "text", "logprobs", "finish_reason"}
COMPLETION_LOGPROBS_KEYS = {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
CHAT_KEYS = {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
CHAT_CHOICE_KEYS = {"index", "message", "logprobs", "finish_reason"}
CHAT_MESSAGE_KEYS = {"role", "content", "refusal"}
CHAT_LOGPROBS_KEYS = {"content", "refusal"}
TOKEN_LOGPROB_KEYS = {"token", "logprob", "bytes", "top_logprobs"}
TOP_LOGPROB_KEYS = {"token", "logprob", "bytes"}
CHUNK_KEYS = {"id", "object", "created", "model", "choices", "system_fingerprint"}
CHUNK_CHOICE_KEYS = {"index", "delta", "logprobs", "finish_reason"}
MODEL_KEYS = {"id", "object", "created", "owned_by", "max_model_len"}  # + vLLM's max_model_len
ERROR_KEYS = {"message", "type", "param", "code"}

USER = {"role": "user", "content": "Hello"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once upon a time", **fields}


def rejected(model: type[BaseModel], body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        p.parse_request(model, body)
    assert info.value.status == 400
    assert set(info.value.body()["error"]) == ERROR_KEYS
    return info.value


def dumped(message: BaseModel) -> dict[str, Any]:
    # What goes on the wire, decoded again: exactly what a client sees.
    return json.loads(message.model_dump_json())


def test_minimal_requests_get_openai_defaults() -> None:
    req = p.parse_request(p.CompletionRequest, completion())
    assert (req.max_tokens, req.n, req.temperature, req.top_p) == (16, 1, 1.0, 1.0)
    assert not req.stream and not req.echo and req.logprobs is None
    assert req.prompts() == ["Once upon a time"] and req.skip_special_tokens
    chat_req = p.parse_request(p.ChatCompletionRequest, chat())
    assert chat_req.max_output_tokens() is None and chat_req.add_generation_prompt
    assert not chat_req.logprobs and not chat_req.add_special_tokens
    assert chat_req.template_messages() == [USER]


def test_full_requests_parse_from_raw_json_with_unknown_and_null_fields() -> None:
    body = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        max_tokens=5, max_completion_tokens=9, temperature=0.7, top_p=0.9, n=2, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=3, stop=["\n", "END"],
        seed=7, presence_penalty=0.5, frequency_penalty=-0.5, user="u", logit_bias={},
        response_format={"type": "text"}, tools=[], tool_choice="none", top_k=40, min_p=0.05,
        repetition_penalty=1.1, ignore_eos=True, min_tokens=2, stop_token_ids=[5, 6],
        skip_special_tokens=False, include_stop_str_in_output=True, add_generation_prompt=False,
        chat_template_kwargs={"enable_thinking": False},
        metadata={"x": "y"}, service_tier="auto", store=None, parallel_tool_calls=None,
    )
    req = p.parse_request(p.ChatCompletionRequest, json.dumps(body).encode())
    assert req.max_output_tokens() == 9 and req.max_tokens_param() == "max_completion_tokens"
    assert req.include_usage() and req.stop_strings() == ("\n", "END")
    assert [m["content"] for m in req.template_messages()] == ["Be brief.", "a\nb", "", "42"]
    assert req.template_messages()[3]["tool_call_id"] == "c1"
    comp = p.parse_request(p.CompletionRequest, completion(
        prompt=[[1, 2], [3]], max_tokens=None, logprobs=5, echo=False, best_of=1, suffix="",
        stop="\n", temperature=None, seed=None, foo="bar",
    ))
    # A JSON null means "unset": max_tokens keeps OpenAI's default of 16.
    assert comp.prompts() == [[1, 2], [3]] and comp.max_tokens == 16 and comp.logprobs == 5
    assert comp.stop_strings() == ("\n",)
    assert p.parse_request(p.CompletionRequest, completion(echo=True)).echo
    assert p.parse_request(p.CompletionRequest, completion(prompt=[4, 5])).prompts() == [[4, 5]]
    assert p.parse_request(p.CompletionRequest, completion(prompt=["a", "b"])).prompts() == [
        "a", "b",
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "1"}, "temperature"),  # strict: no strings for numbers
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": 2.0}, "n"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "16"}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["a", ""]}, "stop[1]"),
        ({"stop": 5}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop_token_ids": [1, -1]}, "stop_token_ids[1]"),
        ({"suffix": "the end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1], []]}, "prompt[1]"),
        ({"prompt": [1, -2]}, "prompt[1]"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_completion_requests_name_the_param(fields: dict[str, Any], param: str) -> None:
    assert rejected(p.CompletionRequest, completion(**fields)).param == param


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [USER, {"role": "user"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]},
         "messages[0].content[0].type"),
        ({"messages": [USER, {"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}]},
         "messages[1].content[1].type"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content[0].type"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"response_format": {}}, "response_format.type"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
        ({"chat_template_kwargs": []}, "chat_template_kwargs"),
    ],
)
def test_bad_chat_requests_name_the_param(fields: dict[str, Any], param: str) -> None:
    assert rejected(p.ChatCompletionRequest, chat(**fields)).param == param


def test_rejections_explain_themselves() -> None:
    image = rejected(p.ChatCompletionRequest, chat(messages=[{"role": "user", "content": [IMAGE]}]))
    assert "image" in image.message and "not supported" in image.message
    assert "logit_bias" in rejected(p.CompletionRequest, completion(logit_bias={"1": 1})).message
    assert "tools" in rejected(p.ChatCompletionRequest, chat(tools=[{"type": "function"}])).message
    assert "4" in rejected(p.CompletionRequest, completion(stop=list("abcde"))).message
    assert "2" in rejected(p.CompletionRequest, completion(temperature=3)).message
    missing = rejected(p.CompletionRequest, {"prompt": "x"})
    assert (missing.param, missing.message) == ("model", "Missing required parameter: 'model'.")


def test_malformed_bodies_are_400s_without_param() -> None:
    for body in (b'{"model": "m",', b"[1, 2]", b'"text"', [1, 2]):
        err = rejected(p.CompletionRequest, body)
        assert err.param is None
    assert "JSON" in rejected(p.CompletionRequest, b"{nope").message


def test_tokenize_requests_follow_vllm() -> None:
    chat_tok = p.parse_tokenize_request(b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert isinstance(chat_tok, p.TokenizeChatRequest) and not chat_tok.add_special_tokens
    assert chat_tok.template_messages() == [{"role": "user", "content": "hi"}]
    prompt_tok = p.parse_tokenize_request({"model": "m", "prompt": "hi"})
    assert isinstance(prompt_tok, p.TokenizeCompletionRequest) and prompt_tok.add_special_tokens
    with pytest.raises(OpenAIError) as info:
        p.parse_tokenize_request({"messages": []})
    assert info.value.param == "messages"
    with pytest.raises(OpenAIError):
        p.parse_tokenize_request(b"{")
    assert p.parse_request(p.DetokenizeRequest, {"tokens": [1, 2]}).tokens == [1, 2]
    assert rejected(p.DetokenizeRequest, {"tokens": [1, -2]}).param == "tokens[1]"
    response = p.TokenizeResponse(count=2, max_model_len=128, tokens=[1, 2])
    assert set(dumped(response)) == {"count", "max_model_len", "tokens", "token_strs"}
    assert dumped(p.DetokenizeResponse(prompt="hi")) == {"prompt": "hi"}


def test_completion_matches_openai() -> None:
    logprobs = p.CompletionLogprobs(
        tokens=["Hi", "!"], token_logprobs=[-0.5, float("-inf")],
        top_logprobs=[{"Hi": -0.5, "Hey": -1.5}, {"!": -0.1}], text_offset=[0, 2],
    )
    resp = p.Completion(
        model="m",
        choices=[
            p.CompletionChoice(index=0, text="Hi!", logprobs=logprobs, finish_reason="length"),
        ],
        usage=p.UsageInfo.of(prompt_tokens=4, completion_tokens=2, cached_tokens=3),
    )
    data = dumped(resp)
    assert set(data) == COMPLETION_KEYS and data["object"] == "text_completion"
    assert data["id"].startswith("cmpl-") and isinstance(data["created"], int)
    assert data["system_fingerprint"] is None
    assert set(data["choices"][0]) == COMPLETION_CHOICE_KEYS
    assert set(data["choices"][0]["logprobs"]) == COMPLETION_LOGPROBS_KEYS
    assert data["choices"][0]["logprobs"]["token_logprobs"][1] == p.MIN_LOGPROB  # JSON has no inf
    assert set(data["usage"]) == USAGE_KEYS
    assert data["usage"]["total_tokens"] == 6
    assert data["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    theirs = openai.types.Completion.model_validate(data)
    assert theirs.usage is not None and theirs.usage.prompt_tokens_details is not None
    assert theirs.usage.prompt_tokens_details.cached_tokens == 3
    assert theirs.choices[0].logprobs is not None
    assert theirs.choices[0].logprobs.top_logprobs == [{"Hi": -0.5, "Hey": -1.5}, {"!": -0.1}]


def test_completion_chunks_carry_usage_only_when_asked() -> None:
    choice = p.CompletionChoice(index=0, text="a")
    plain = dumped(p.CompletionChunk(id="cmpl-x", created=1, model="m", choices=[choice]))
    assert set(plain) == COMPLETION_KEYS - {"usage"} and plain["object"] == "text_completion"
    asked = dumped(p.CompletionChunk(id="cmpl-x", created=1, model="m", choices=[choice],
                                     usage=None))
    assert set(asked) == COMPLETION_KEYS and asked["usage"] is None
    last = p.CompletionChunk(id="cmpl-x", created=1, model="m", choices=[
        p.CompletionChoice(index=0, text="", finish_reason="stop"),
    ], usage=p.UsageInfo.of(3, 1))
    data = dumped(last)
    assert list(data)[-1] == "usage" and data["usage"]["prompt_tokens_details"] is None
    openai.types.Completion.model_validate(data)
    # Mid-stream chunks have finish_reason null, which OpenAI sends but its SDK's (strict)
    # type forbids; the SDK builds stream chunks without validation.
    assert plain["choices"][0]["finish_reason"] is None


def test_chat_completion_matches_openai() -> None:
    top = [p.TopLogprob.of("Hi", -0.2), p.TopLogprob.of("é", -2.0)]
    token = p.TokenLogprob(token="Hi", logprob=-0.2, bytes=list(b"Hi"), top_logprobs=top)
    resp = p.ChatCompletion(
        model="m",
        choices=[p.ChatChoice(
            index=0, message=p.AssistantMessage(content="Hi"),
            logprobs=p.ChatLogprobs(content=[token]), finish_reason="stop",
        )],
        usage=p.UsageInfo.of(5, 1),
    )
    data = dumped(resp)
    assert set(data) == CHAT_KEYS and data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert set(choice) == CHAT_CHOICE_KEYS and set(choice["message"]) == CHAT_MESSAGE_KEYS
    assert choice["message"] == {"role": "assistant", "content": "Hi", "refusal": None}
    assert set(choice["logprobs"]) == CHAT_LOGPROBS_KEYS
    assert set(choice["logprobs"]["content"][0]) == TOKEN_LOGPROB_KEYS
    assert set(choice["logprobs"]["content"][0]["top_logprobs"][0]) == TOP_LOGPROB_KEYS
    assert choice["logprobs"]["content"][0]["top_logprobs"][1]["bytes"] == [0xC3, 0xA9]
    theirs = openai.types.chat.ChatCompletion.model_validate(data)
    assert theirs.choices[0].message.content == "Hi"
    assert theirs.choices[0].logprobs is not None and theirs.choices[0].logprobs.content
    assert theirs.choices[0].logprobs.content[0].top_logprobs[1].token == "é"
    no_logprobs = dumped(resp.model_copy(update={"choices": [
        p.ChatChoice(index=0, message=p.AssistantMessage(content="x"), finish_reason="length"),
    ]}))
    assert no_logprobs["choices"][0]["logprobs"] is None


def test_chat_chunks_match_openai_streaming() -> None:
    def chunk(delta: p.DeltaMessage, finish: p.FinishReason | None = None, **kw: Any) -> Any:
        choice = p.ChatChunkChoice(index=0, delta=delta, finish_reason=finish)
        return dumped(p.ChatCompletionChunk(id="chatcmpl-x", created=1, model="m",
                                            choices=[choice], **kw))

    first = chunk(p.DeltaMessage(role="assistant", content=""))
    middle = chunk(p.DeltaMessage(content="Hel"))
    last = chunk(p.DeltaMessage(), "stop")
    assert set(first) == CHUNK_KEYS and first["object"] == "chat.completion.chunk"
    assert set(first["choices"][0]) == CHUNK_CHOICE_KEYS
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle["choices"][0]["delta"] == {"content": "Hel"}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    with_usage_key = chunk(p.DeltaMessage(content="x"), usage=None)
    assert set(with_usage_key) == CHUNK_KEYS | {"usage"} and with_usage_key["usage"] is None
    usage = dumped(p.ChatCompletionChunk(id="chatcmpl-x", created=1, model="m", choices=[],
                                         usage=p.UsageInfo.of(5, 3)))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 8
    for data in (first, middle, last, with_usage_key, usage):
        openai.types.chat.ChatCompletionChunk.model_validate(data)
    event = p.sse_event(p.ChatCompletionChunk(model="m", choices=[]))
    assert event.startswith("data: {") and event.endswith("}\n\n")
    assert p.SSE_DONE == "data: [DONE]\n\n"


def test_model_list_matches_openai() -> None:
    data = dumped(p.ModelList(data=[p.ModelCard(id="llama", max_model_len=4096)]))
    assert set(data) == {"object", "data"} and data["object"] == "list"
    assert set(data["data"][0]) == MODEL_KEYS
    assert data["data"][0]["owned_by"] == "raylight"
    theirs = openai.types.Model.model_validate(data["data"][0])
    assert theirs.id == "llama" and theirs.object == "model"


def test_error_bodies_have_openai_shape() -> None:
    body = error_body("bad", param="n")
    assert body == {"error": {"message": "bad", "type": "invalid_request_error",
                              "param": "n", "code": None}}
    err = model_not_found("gpt-9")
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    assert set(err.body()["error"]) == ERROR_KEYS


def test_engine_errors_become_400s_with_their_param() -> None:
    err = from_request_rejected(RequestRejectedError("prompt too long", param="prompt"))
    assert (err.status, err.param, err.message) == (400, "prompt", "prompt too long")
    err = from_sampling_params_error(SamplingParamsError("logprobs", "must be in [0, 20]"),
                                     {"logprobs": "top_logprobs"})
    assert (err.status, err.param) == (400, "top_logprobs")
    assert err.message.startswith("top_logprobs ")


def test_fastapi_validation_locations_drop_body() -> None:
    errors = [{"type": "less_than_equal", "loc": ("body", "temperature"),
               "msg": "Input should be less than or equal to 2", "input": 3}]
    assert from_validation_errors(errors).param == "temperature"


def test_default_sampling_params() -> None:
    comp = p.parse_request(p.CompletionRequest, completion())
    assert sampling_params_from(comp, max_model_len=2048) == SamplingParams(max_tokens=16)
    chat_req = p.parse_request(p.ChatCompletionRequest, chat())
    assert sampling_params_from(chat_req, max_model_len=2048) == SamplingParams(max_tokens=None)
    assert detokenize_options_from(chat_req) == TextOptions(True, (), False)


def test_every_sampling_field_reaches_the_engine() -> None:
    req = p.parse_request(p.CompletionRequest, completion(
        n=3, temperature=0.5, top_p=0.8, top_k=20, min_p=0.1, repetition_penalty=1.2,
        presence_penalty=0.3, frequency_penalty=-0.4, seed=11, max_tokens=30, min_tokens=4,
        stop_token_ids=[7, 9], ignore_eos=True, logprobs=2, stop=["x", "y"],
        skip_special_tokens=False, include_stop_str_in_output=True,
    ))
    assert sampling_params_from(req, max_model_len=64) == SamplingParams(
        n=3, temperature=0.5, top_p=0.8, top_k=20, min_p=0.1, repetition_penalty=1.2,
        presence_penalty=0.3, frequency_penalty=-0.4, seed=11, max_tokens=30, min_tokens=4,
        stop_token_ids=(7, 9), ignore_eos=True, logprobs=2,
    )
    assert detokenize_options_from(req) == TextOptions(False, ("x", "y"), True)
    assert detokenize_options_from(p.parse_request(p.CompletionRequest, completion(stop="z"))) == (
        TextOptions(True, ("z",), False)
    )


@pytest.mark.parametrize(
    ("fields", "max_tokens", "logprobs"),
    [
        ({"max_tokens": 5, "max_completion_tokens": 9}, 9, None),
        ({"max_tokens": 5}, 5, None),
        ({"max_completion_tokens": 9}, 9, None),
        ({"logprobs": True}, None, 0),
        ({"logprobs": True, "top_logprobs": 4}, None, 4),
        ({"logprobs": False}, None, None),
    ],
)
def test_chat_sampling_params(fields: dict[str, Any], max_tokens: int | None,
                              logprobs: int | None) -> None:
    params = sampling_params_from(p.parse_request(p.ChatCompletionRequest, chat(**fields)), 100)
    assert (params.max_tokens, params.logprobs) == (max_tokens, logprobs)


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        (p.CompletionRequest, completion(max_tokens=100), "max_tokens"),
        (p.ChatCompletionRequest, chat(max_tokens=100), "max_tokens"),
        (p.ChatCompletionRequest, chat(max_tokens=5, max_completion_tokens=100),
         "max_completion_tokens"),
        (p.CompletionRequest, completion(max_tokens=4, min_tokens=5), "min_tokens"),
        (p.ChatCompletionRequest, chat(min_tokens=5, max_tokens=4), "min_tokens"),
        (p.CompletionRequest, completion(seed=-1), "seed"),
        (p.CompletionRequest, completion(seed=2**63), "seed"),
    ],
)
def test_impossible_sampling_params_are_400s(model: type[p.CompletionRequest]
                                             | type[p.ChatCompletionRequest],
                                             body: dict[str, Any], param: str) -> None:
    req = p.parse_request(model, body)
    with pytest.raises(OpenAIError) as info:
        sampling_params_from(req, max_model_len=100)
    assert (info.value.status, info.value.param) == (400, param)
