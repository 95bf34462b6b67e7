"""The bundled demo task: templated two-person dialogues -> one-line summaries (see make_demo.py)."""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_DATA = DEMO_DIR / "data"
"""Directory of train.jsonl, validation.jsonl, test.jsonl (fields dialogue, summary)."""
DEMO_TOKENIZER = DEMO_DIR / "tokenizer"
"""Word-level PreTrainedTokenizerFast directory (<pad> 0, </s> 1, <unk> 2, <s> 3)."""
