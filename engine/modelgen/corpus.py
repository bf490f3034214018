"""A deterministic training corpus for the generated BPE tokenizers.

Everything is produced in code from a fixed `random.Random`, so the same call gives the same
lines on every machine and Python version (no downloads, no system dictionaries). The mix
(English-like prose, code, numbers, CJK, emoji, and invented words) makes BPE learn merges for
all of them, so typical prompts tokenize into a realistic number of tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_ENGLISH = (
    "the of and to in is was for on that with as by at from it his an were are which this be "
    "or has had not but first one their its new after who they have her she two been other "
    "when there all during into school time may years more most only over city some world "
    "would where later up such used many can state about national out known university "
    "united then made also part year three include between well under system during before "
    "people because government while since several including being work water number "
    "language model token cache request batch server engine memory layer attention kernel "
    "please answer question write story explain hello thank you today weather good great "
    "small large fast slow house river mountain music light dark green blue red open close "
    "read learn think know make take give find tell ask seem feel try leave call keep begin"
).split()

_CODE_TEMPLATES = (
    "def {a}({b}, {c}):\n    return {b} + {c} * {n}\n",
    "for {a} in range({n}):\n    {b}.append({a} ** 2)\n",
    "if {a} is None:\n    raise ValueError(\"{b} must be set\")\n",
    "class {A}:\n    def __init__(self, {a}: int) -> None:\n        self.{a} = {a}\n",
    "import {a}\nfrom {b} import {c}\n",
    "{a} = [{b} for {b} in {c} if {b} > {n}]\n",
    "int {a}(int {b}) {{ return {b} * {n}; }}\n",
    "const {a} = ({b}) => {{ console.log({b}, {n}); }};\n",
    "print(f\"{{{a}}}: {{{b}:.3f}}\")\n",
    "{{\"{a}\": {n}, \"{b}\": [\"{c}\", null, true]}}\n",
)

# Common Chinese characters, hiragana, katakana and hangul syllables.
_CJK = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能"
    "对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前"
    "面又定见只主没公从已知全问题模型语言文字数据计算机服务器请回答谢谢今天天气很好世界朋友"
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲン"
    "가나다라마바사아자차카타파하는을를이가에서와과한국어안녕하세요감사합니다"
)

_EMOJI = (
    "😀", "😂", "🥲", "😍", "🤔", "😭", "👍", "👎", "🙏", "🔥", "✨", "🎉", "❤️", "💡", "🚀",
    "🌍", "🍕", "☕", "🐍", "🦀", "🤖", "📈", "✅", "❌", "⚠️", "👨‍👩‍👧", "🏳️‍🌈", "👋🏽", "🇯🇵",
)

_ONSETS = ("", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "z", "br", "ch", "cl", "dr", "gr", "pl", "pr", "sh", "st", "str", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "io", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rs", "st", "ck")


def invented_word(rng: random.Random) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.randint(1, 3))
    )


def _lexicon(rng: random.Random, size: int) -> list[str]:
    """Real words followed by invented ones; sampled Zipf-like so frequent words merge fully."""
    words = list(_ENGLISH)
    while len(words) < size:
        words.append(invented_word(rng))
    return words


def _zipf_pick(rng: random.Random, words: list[str]) -> str:
    # Index ~ exp(U * ln N) gives a heavy head and a long tail, like natural text.
    return words[min(len(words) - 1, int(len(words) ** rng.random()) - 1)]


def _prose(rng: random.Random, words: list[str]) -> str:
    sentence = " ".join(_zipf_pick(rng, words) for _ in range(rng.randint(4, 16)))
    sentence = sentence[0].upper() + sentence[1:]
    return sentence + rng.choice((".", ".", ".", "?", "!", ",", ";", ":"))


def _code(rng: random.Random, words: list[str]) -> str:
    a, b, c = (_zipf_pick(rng, words) for _ in range(3))
    return rng.choice(_CODE_TEMPLATES).format(
        a=a, b=b, c=c, A=a.capitalize(), n=rng.randint(0, 1000)
    )


def _numbers(rng: random.Random) -> str:
    return rng.choice((
        f"{rng.randint(0, 10**rng.randint(1, 9))}",
        f"{rng.uniform(-1000, 1000):.{rng.randint(1, 4)}f}",
        f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        f"${rng.randint(1, 99999):,}",
        f"{rng.randint(1, 100)}%",
    ))


def _cjk(rng: random.Random) -> str:
    # Bigrams of a small character set repeat often, so they get merged like real CJK words.
    return "".join(
        rng.choice(_CJK[:80]) + rng.choice(_CJK) for _ in range(rng.randint(2, 10))
    ) + rng.choice(("。", "，", "！", "？", "、"))


def _emoji(rng: random.Random, words: list[str]) -> str:
    return f"{_zipf_pick(rng, words)} {rng.choice(_EMOJI)}" + rng.choice(_EMOJI) * rng.randint(0, 2)


def corpus_lines(num_lines: int, lexicon_size: int, seed: int = 0) -> Iterator[str]:
    """Yield `num_lines` lines of mixed text; identical for identical arguments."""
    rng = random.Random(seed)
    words = _lexicon(rng, lexicon_size)
    for _ in range(num_lines):
        kind = rng.random()
        if kind < 0.55:
            yield " ".join(_prose(rng, words) for _ in range(rng.randint(1, 4)))
        elif kind < 0.70:
            yield _code(rng, words)
        elif kind < 0.80:
            yield " ".join(_numbers(rng) for _ in range(rng.randint(1, 6)))
        elif kind < 0.93:
            yield _cjk(rng)
        else:
            yield _emoji(rng, words)
