"""Random-weight model directories: HF loads them, tokenizers round-trip, writes stream."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from raylight.cluster.cli import main, parse_size
from raylight.engine.modelgen.archs import ARCHS, get_arch
from raylight.engine.modelgen.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from raylight.engine.modelgen.make_model import make_model
from raylight.engine.modelgen.presets import ModelShape, get_preset
from raylight.engine.modelgen.tokenizer import build_tokenizer, write_tokenizer_files
from raylight.engine.modelgen.tokenizer_styles import TOKENIZER_STYLES
from raylight.engine.modelgen.weight_plan import num_params, plan_tensors
from raylight.engine.modelgen.weights_writer import make_tensor, write_weights

ARCH_NAMES = ("llama", "mistral", "qwen2", "qwen3")
MIXED_TEXT = (
    "Hello, world! 你好，世界。こんにちは 안녕하세요 🚀🔥👨‍👩‍👧\n"
    "def f(x): return x**2  # 3.14"
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        arch: make_model(arch, "tiny", root / arch, dtype="float32", progress=False)
        for arch in ARCH_NAMES
    }


def _load(path: Path) -> Any:  # a PreTrainedModel; HF stubs type its attributes as unions
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


def _expected_params(cfg: dict) -> int:
    """Parameter count from config.json alone, independent of the generator's plan."""
    h, hd, inter = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    layer = 2 * h + h * (q + 2 * kv) + q * h + 3 * h * inter
    if cfg["model_type"] == "qwen2":
        layer += q + 2 * kv
    if cfg["model_type"] == "qwen3":
        layer += 2 * hd
    heads = 1 if cfg["tie_word_embeddings"] else 2
    return cfg["num_hidden_layers"] * layer + h + heads * cfg["vocab_size"] * h


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_hf_loads_tiny_model(tiny_dirs: dict[str, Path], arch: str) -> None:
    path = tiny_dirs[arch]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == [get_arch(arch).hf_class]
    model = _load(path)
    assert model.num_parameters() == _expected_params(cfg)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == cfg["vocab_size"]  # tiny: every id the model can emit is a real token
    gen = json.loads((path / "generation_config.json").read_text())
    stops = TOKENIZER_STYLES[get_arch(arch).tokenizer_style].stop_tokens
    assert gen["eos_token_id"] == cfg["eos_token_id"] == tok.convert_tokens_to_ids(list(stops))
    assert model.generation_config.eos_token_id == gen["eos_token_id"]
    if arch == "llama":
        assert model.config.rope_parameters["rope_type"] == "llama3"
    if arch == "qwen3":
        q_norm = model.model.layers[0].self_attn.q_norm.weight
        assert q_norm.shape == (cfg["head_dim"],)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_weights_are_informative(tiny_dirs: dict[str, Path], arch: str) -> None:
    weights = load_file(tiny_dirs[arch] / "model.safetensors")
    assert all(bool((t != 0).all()) for t in weights.values())
    model = _load(tiny_dirs[arch])
    tok = AutoTokenizer.from_pretrained(tiny_dirs[arch])
    ids = tok(MIXED_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]  # logits: [tokens, vocab]
    assert 2.0 < float(logits.std(dim=-1).mean()) < 8.0
    assert len(set(logits.argmax(-1).tolist())) > ids.shape[1] // 2  # depends on context
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8 or out[0, -1].item() in tok.all_special_ids


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_tokenizer_round_trip_and_chat_template(tiny_dirs: dict[str, Path], arch: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dirs[arch])
    ids = tok.encode(MIXED_TEXT, add_special_tokens=False)
    assert tok.decode(ids) == MIXED_TEXT
    assert len(ids) < len(MIXED_TEXT.encode())  # merges were learned
    decoded = [tok.decode([i]) for i in range(len(tok))]
    assert all(isinstance(s, str) for s in decoded)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 👋"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    if get_arch(arch).tokenizer_style == "llama3":
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert tok.encode("x")[0] == tok.bos_token_id
    else:
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert text.endswith("<|im_start|>assistant\n")
        assert tok.encode("x", add_special_tokens=True) == tok.encode("x", add_special_tokens=False)
    assert "你好 👋" in text
    no_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert isinstance(no_prompt, str)
    assert not no_prompt.endswith("assistant\n") and not no_prompt.endswith("\n\n\n")


def test_large_vocab_tokenizer_is_fast_and_decodes_every_id(tmp_path: Path) -> None:
    shape = get_preset("llama3-8b")
    style = TOKENIZER_STYLES["llama3"]
    write_tokenizer_files(
        build_tokenizer(style, shape.bpe_vocab_size, shape.vocab_size), style, tmp_path, 8192
    )
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert len(tok) == shape.vocab_size
    assert tok.convert_tokens_to_ids("<|eot_id|>") == shape.vocab_size - 2
    assert None not in tok.convert_ids_to_tokens(list(range(shape.vocab_size)))
    assert len(tok.decode(list(range(shape.vocab_size)))) > shape.vocab_size
    assert tok.decode(tok.encode(MIXED_TEXT, add_special_tokens=False)) == MIXED_TEXT


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = make_model("qwen2", "tiny", tmp_path / "a", seed=7, progress=False)
    b = make_model("qwen2", "tiny", tmp_path / "b", seed=7, progress=False)
    c = make_model("qwen2", "tiny", tmp_path / "c", seed=8, progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert all(t.dtype == torch.bfloat16 for t in load_file(a / "model.safetensors").values())


def test_multi_shard_write_matches_single_file(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    single = tiny_dirs["llama"]
    sharded = make_model(
        "llama", "tiny", tmp_path / "m", dtype="float32", max_shard_bytes=200_000, progress=False
    )
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (sharded / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == (single / "model.safetensors").stat().st_size - (
        8 + int.from_bytes((single / "model.safetensors").read_bytes()[:8], "little")
    )
    one, many = _load(single).state_dict(), _load(sharded).state_dict()
    assert one.keys() == many.keys()
    assert all(torch.equal(one[k], many[k]) for k in one)
    # Rewriting as one file removes the stale shards and index.
    make_model("llama", "tiny", sharded, dtype="float32", progress=False)
    assert sorted(p.name for p in sharded.glob("model*")) == ["model.safetensors"]


def test_tied_embeddings_preset(tmp_path: Path) -> None:
    path = make_model("qwen2", "tiny-tied", tmp_path / "t", dtype="float32", progress=False)
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    model = _load(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_real_shapes_plan_without_writing() -> None:
    assert num_params(plan_tensors(get_arch("llama"), get_preset("llama3-8b"))) == 8_030_261_248
    assert num_params(plan_tensors(get_arch("llama"), get_preset("llama3-70b"))) == 70_553_706_496
    assert num_params(plan_tensors(get_arch("qwen2"), get_preset("qwen2.5-7b"))) == 7_615_616_512
    assert 50e6 <= num_params(plan_tensors(get_arch("llama"), get_preset("small"))) <= 120e6


def test_write_streams_one_shard_at_a_time(tmp_path: Path) -> None:
    shape = ModelShape(
        hidden_size=96, intermediate_size=160, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=2, head_dim=16, vocab_size=300, bpe_vocab_size=300,
        max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5,
    )
    plan = plan_tensors(get_arch("qwen3"), shape)
    max_shard = 150_000
    live: list[weakref.ref[torch.Tensor]] = []
    peak = 0

    def tracking_make(spec):  # records the bytes still alive each time a tensor is made
        nonlocal peak
        tensor = make_tensor(spec, seed=0, dtype=torch.float32, device="cpu")
        live.append(weakref.ref(tensor))
        peak = max(peak, sum(t.nbytes for r in live if (t := r()) is not None))
        return tensor

    names = write_weights(plan, tmp_path, tracking_make, 4, max_shard, progress=False)
    largest = max(spec.numel for spec in plan) * 4
    assert len(names) >= 4
    assert peak <= max_shard + largest
    assert sum(len(load_file(tmp_path / n)) for n in names) == len(plan)


def test_default_model_is_cached_atomically(tmp_path: Path) -> None:
    path = ensure_default_model(tmp_path)
    assert path == tmp_path / DEFAULT_MODEL_NAME
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_MODEL_NAME]  # no temp dirs left
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == "float32"


def test_cli_make_model(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["make-model", "--arch", "qwen3", "--preset", "tiny", "--out", str(out), "--seed",
            "3", "--dtype", "float16", "--device", "cpu", "--max-shard-size", "300KB",
            "--no-progress"]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["torch_dtype"] == "float16"
    assert (out / "model.safetensors.index.json").exists()
    assert parse_size("5GB") == 5 * 10**9 and parse_size("5GiB") == 5 * 2**30
    assert parse_size("1024") == 1024


def test_cli_import_is_light() -> None:
    code = "import sys, raylight.cluster.cli; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        make_model("llama", "huge", tmp_path)
    with pytest.raises(ValueError, match="unknown arch"):
        make_model("gpt2", "tiny", tmp_path)
    assert set(ARCHS) == set(ARCH_NAMES)
