"""Build the bundled demo task and its word-level tokenizer (deterministic; run once, commit outputs).

    python -m nash_ds.demo.make_demo            # writes nash_ds/demo/data/*.jsonl and tokenizer/

The task: templated two-person dialogues -> one-line summaries. A summary needs several turns
(who speaks, what and where from one turn, the day or time from a later one, a reason phrased
differently), so the model must attend across the dialogue, yet a tiny T5 learns it in a couple
hundred steps because the sequences are short and the vocabulary is a few hundred words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
PREFIX = "summarize: "
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0, 1, 2, 3 (T5 conventions)
SPLIT_SIZES = {"train": 3000, "validation": 200, "test": 200}
SEED = 1234

NAMES = [
    "Anna", "Ben", "Chloe", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack",
    "Kate", "Leo", "Mia", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tina", "Victor",
    "Wendy", "Yusuf", "Zoe", "Omar", "Lena", "Marco", "Nina", "Oscar", "Priya", "Tom",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = [f"{h} am" for h in (8, 9, 10, 11)] + [f"{h} pm" for h in range(1, 10)]
# activity -> places where it plausibly happens
ACTIVITIES = {
    "play tennis": ["park", "club"],
    "have lunch": ["cafe", "restaurant", "canteen"],
    "watch a movie": ["cinema", "mall"],
    "study": ["library", "cafe"],
    "go swimming": ["pool", "beach"],
    "have coffee": ["cafe", "bakery", "station"],
    "play chess": ["club", "library", "park"],
    "go running": ["park", "beach", "stadium"],
    "have dinner": ["restaurant", "hotel"],
    "go shopping": ["mall", "market"],
}
ITEMS = ["book", "laptop", "umbrella", "charger", "keys", "camera", "jacket", "notes", "ticket", "bike"]
ITEM_PLACES = ["office", "station", "library", "cafe", "gym", "school", "park", "market"]
# what B says in the dialogue -> how the summary phrases it
REASONS = {
    "I have to work.": "work",
    "I have an exam.": "an exam",
    "I caught a cold.": "a cold",
    "We have a family dinner.": "a family dinner",
    "I am on a trip.": "a trip",
    "My car is broken.": "a broken car",
}
GREETINGS = ["Hi {b}!", "Hey {b}.", "Hello {b}, how are you?", "Good morning {b}."]
REPLIES = ["Hi {a}.", "Hey {a}!", "Hello {a}, all good."]
PROPOSE = ["Do you want to {act} at the {place} on {day}?", "Shall we {act} at the {place} on {day}?",
           "Would you like to {act} at the {place} on {day}?", "Let us {act} at the {place} on {day}."]
YES_WHEN = ["Sure, what time?", "Yes, when?", "Sounds good. What time?", "Good idea, at what time?"]
AT_TIME = ["How about {time}?", "Is {time} fine?", "Let us say {time}.", "At {time}."]
CONFIRM = ["Perfect, see you then.", "Great, see you there.", "Fine with me.", "OK, it is a deal."]


def _dialogue(turns: list[tuple[str, str]]) -> str:
    return "\n".join(f"{who}: {text}" for who, text in turns)


def _greet(rng: random.Random, a: str, b: str) -> list[tuple[str, str]]:
    if rng.random() < 0.4:
        return [(a, rng.choice(GREETINGS).format(b=b)), (b, rng.choice(REPLIES).format(a=a))]
    return []


def _meet(rng: random.Random, a: str, b: str) -> dict:
    """A proposes an activity, B asks when, A names a time: info from three turns."""
    act = rng.choice(list(ACTIVITIES))
    place, day, time = rng.choice(ACTIVITIES[act]), rng.choice(DAYS), rng.choice(TIMES)
    turns = _greet(rng, a, b) + [
        (a, rng.choice(PROPOSE).format(act=act, place=place, day=day)),
        (b, rng.choice(YES_WHEN)),
        (a, rng.choice(AT_TIME).format(time=time)),
        (b, rng.choice(CONFIRM)),
    ]
    return {"dialogue": _dialogue(turns), "summary": f"{a} and {b} will {act} at the {place} on {day} at {time}."}


def _reschedule(rng: random.Random, a: str, b: str) -> dict:
    """B cannot on the proposed day and offers another: the summary takes the later day."""
    act = rng.choice(list(ACTIVITIES))
    place, time = rng.choice(ACTIVITIES[act]), rng.choice(TIMES)
    day1, day2 = rng.sample(DAYS, 2)
    turns = _greet(rng, a, b) + [
        (a, rng.choice(PROPOSE).format(act=act, place=place, day=day1)),
        (b, rng.choice([f"I cannot on {day1}. What about {day2}?", f"{day1} is bad for me, maybe {day2}?"])),
        (a, rng.choice([f"{day2} works. {time}?", f"OK, {day2} at {time} then?"])),
        (b, rng.choice(CONFIRM)),
    ]
    return {"dialogue": _dialogue(turns), "summary": f"{a} and {b} will {act} at the {place} on {day2} at {time}."}


def _decline(rng: random.Random, a: str, b: str) -> dict:
    """B declines; the reason is said in B's words and summarised as a noun phrase."""
    act = rng.choice(list(ACTIVITIES))
    place, day = rng.choice(ACTIVITIES[act]), rng.choice(DAYS)
    said, reason = rng.choice(list(REASONS.items()))
    turns = _greet(rng, a, b) + [
        (a, rng.choice(PROPOSE).format(act=act, place=place, day=day)),
        (b, rng.choice(["Sorry, I cannot.", "I am afraid not.", "Not this time, sorry."])),
        (a, rng.choice(["Why not?", "Oh, what happened?", "Is everything OK?"])),
        (b, said),
    ]
    return {"dialogue": _dialogue(turns), "summary": f"{b} cannot {act} with {a} on {day} because of {reason}."}


def _bring(rng: random.Random, a: str, b: str) -> dict:
    """A asks B to bring an item; B asks when; the summary is told from B's side."""
    item, place, day, time = rng.choice(ITEMS), rng.choice(ITEM_PLACES), rng.choice(DAYS), rng.choice(TIMES)
    turns = _greet(rng, a, b) + [
        (a, rng.choice([f"Can you bring my {item} to the {place}?", f"Could you bring my {item} to the {place}?"])),
        (b, rng.choice(["Sure, when?", "No problem. When?", "OK, what day?"])),
        (a, rng.choice([f"On {day} at {time}.", f"{day}, around {time}."])),
        (b, rng.choice(["OK, I will.", "Fine, I will be there.", "Sure thing."])),
    ]
    summary = f"{b} will bring the {item} to {a} at the {place} on {day} at {time}."
    return {"dialogue": _dialogue(turns), "summary": summary}


TEMPLATES = [_meet, _reschedule, _decline, _bring]


def make_examples(num: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(num):
        a, b = rng.sample(NAMES, 2)
        out.append(rng.choice(TEMPLATES)(rng, a, b))
    return out


def make_splits(seed: int = SEED) -> dict[str, list[dict]]:
    """Disjoint splits (no dialogue of validation/test appears in train)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            ex = make_examples(1, rng)[0]
            if ex["dialogue"] not in seen:
                seen.add(ex["dialogue"])
                rows.append(ex)
        splits[split] = rows
    return splits


def build_tokenizer(texts: list[str]):
    """WordLevel vocabulary over ``texts`` with T5-style specials, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    # joins words with spaces and glues punctuation back (" ." -> ".", " ," -> ","), so decoded
    # summaries equal the originals; no token starts with "##", so the prefix never merges words
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>",
        model_max_length=512,
    )
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    return fast


def main(out_dir: Path = DEMO_DIR, seed: int = SEED) -> None:
    splits = make_splits(seed)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(data_dir / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    texts = [PREFIX] + [t for row in splits["train"] for t in (row["dialogue"], row["summary"])]
    tok = build_tokenizer(texts)
    tok.save_pretrained(str(out_dir / "tokenizer"))
    # every word of validation/test is in the vocabulary and summaries survive a round trip
    for split, rows in splits.items():
        for row in rows:
            ids = tok(PREFIX + row["dialogue"])["input_ids"] + tok(row["summary"])["input_ids"]
            assert tok.unk_token_id not in ids, (split, row)
            assert tok.decode(tok(row["summary"])["input_ids"], skip_special_tokens=True) == row["summary"], row
    print(f"wrote {', '.join(f'{k}={len(v)}' for k, v in splits.items())} to {data_dir}; vocab {len(tok)}")


if __name__ == "__main__":
    main()
