"""`raylight serve`: start (or join) Ray, deploy the OpenAI-compatible app, serve until stopped."""

from __future__ import annotations

import argparse
import os
import signal
import threading


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (default: the embedded tiny model)",
        description="Deploy raylight on Ray Serve and serve until Ctrl-C / SIGTERM.",
    )
    p.add_argument("--model", default="", help="HF model directory (default: embedded tiny)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None, help="join this Ray cluster (default: RAY_ADDRESS "
                   "or a new local instance)")  # fmt: skip
    p.add_argument("--served-model-name", default="")
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-engine-replicas", type=int, default=1)
    p.add_argument("--num-ingress-replicas", type=int, default=1)
    p.add_argument("--max-queued-requests", type=int, default=1024,
                   help="per engine replica; more waiting requests get a 503 (-1: no limit)")
    p.add_argument("--max-request-body-bytes", type=int, default=None,
                   help="larger request bodies get a 413 (default 32 MiB)")
    p.add_argument("--tensor-parallel-size", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-prefix-cache", dest="enable_prefix_caching", action="store_false",
                   default=None, help="turn off the token-level prefix cache")
    p.add_argument("--admission-policy", default=None,
                   choices=["conservative", "aggressive", "past-future"],
                   help="how an engine admits waiting requests (default: past-future)")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule each step while the previous one runs on the GPU "
                   "(default: on with CUDA at tensor-parallel size 1)")  # fmt: skip
    p.add_argument("--kv-cache-dtype", default=None, choices=["auto", "fp8", "fp8_e4m3"],
                   help="KV pool element type (default auto: the model's dtype; fp8 halves "
                   "the bytes per token)")  # fmt: skip
    p.set_defaults(handler=run_serve)


_APP_ARGS = (
    "model", "served_model_name", "api_key", "num_engine_replicas", "num_ingress_replicas",
    "max_queued_requests", "max_request_body_bytes", "tensor_parallel_size", "max_model_len",
    "max_num_seqs", "max_num_batched_tokens", "dtype", "gpu_memory_utilization", "seed",
    "enable_prefix_caching", "admission_policy", "async_scheduling", "kv_cache_dtype",
)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from raylight.cluster.app import build_app

    app_args = {k: getattr(args, k) for k in _APP_ARGS if getattr(args, k) is not None}
    address = args.address or os.environ.get("RAY_ADDRESS")
    started_ray = address is None
    if started_ray:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(app_args), name="raylight", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        print(f"raylight is serving at {url}/v1 (Ctrl-C to stop)\n"
              f"  curl {url}/v1/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"<name from {url}/v1/models>\", \"prompt\": \"Hello\", "
              f"\"max_tokens\": 16}}'", flush=True)  # fmt: skip
        stop.wait()
    finally:
        serve.delete("raylight", _blocking=True)
        if started_ray:
            serve.shutdown()
            ray.shutdown()
    return 0
