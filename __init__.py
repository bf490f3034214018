"""raylight: LLM inference and serving on Ray.

`from raylight import LLM, SamplingParams` gives the offline API; both names load lazily so that
importing a subpackage (`raylight.kernels`, `raylight.cluster`) never pulls in the engine.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from raylight.engine.llm import LLM
    from raylight.engine.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from raylight.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from raylight.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'raylight' has no attribute {name!r}")
