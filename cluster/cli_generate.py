"""`raylight generate`: offline generation from the command line (no server)."""

from __future__ import annotations

import argparse

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "春天来了，",
)


def add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text offline from a model directory (default: the embedded tiny model)",
        description="Load a model and generate from prompts with continuous batching.",
    )
    p.add_argument("--model", default=None, help="HF model directory (default: embedded tiny)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import time

    from raylight.engine.llm import LLM
    from raylight.engine.modelgen.default_model import ensure_default_model
    from raylight.engine.sampling_params import SamplingParams

    model = args.model or str(ensure_default_model())
    llm = LLM(
        model,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
    )
    prompts: list = list(args.prompt or DEFAULT_PROMPTS)
    if args.chat:
        # Token ids straight from the template: encoding its text again would add a second BOS.
        prompts = [
            list(
                llm.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    tokenize=True,
                    add_generation_prompt=True,
                    return_dict=False,
                )
            )
            for p in prompts
        ]
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_tokens = 0
    for out in outputs:
        shown = out.prompt
        if shown is None:
            shown = llm.tokenizer.decode(out.prompt_token_ids)
        for c in out.outputs:
            num_tokens += len(c.token_ids)
            print(f"--- prompt: {shown!r}")
            print(f"    output ({len(c.token_ids)} tokens, {c.finish_reason}): {c.text!r}")
    rate = num_tokens / elapsed
    print(f"model {model}: {num_tokens} tokens in {elapsed:.2f} s ({rate:.0f} tok/s)")
    return 0
