"""Self-contained modeling code for pruned models with per-layer widths.

Every file here imports only torch, transformers and its siblings (relative imports), because
``save_pretrained`` copies it into the exported directory, where ``auto_map`` in config.json
points ``AutoConfig`` / ``AutoModelForSeq2SeqLM`` at it (``trust_remote_code=True``).
"""

from .configuration_nash_bart import NashBartConfig
from .configuration_nash_mbart import NashMBartConfig
from .configuration_nash_t5 import NashT5Config
from .modeling_nash_bart import NashBartForConditionalGeneration
from .modeling_nash_mbart import NashMBartForConditionalGeneration
from .modeling_nash_t5 import NashT5ForConditionalGeneration
from .modeling_nash_utils import EmptyLinear

__all__ = ["EmptyLinear", "NashBartConfig", "NashBartForConditionalGeneration", "NashMBartConfig",
           "NashMBartForConditionalGeneration", "NashT5Config", "NashT5ForConditionalGeneration"]
