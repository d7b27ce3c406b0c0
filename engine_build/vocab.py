"""A deterministic BERT-layout WordPiece vocabulary for random-weight test checkpoints.

BLIP's text side is BERT's: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, and the
decoder start token [DEC] right after the vocabulary. The real vocabulary cannot be
downloaded here, so the rest is filled with common caption words, characters, and
pronounceable made-up words and "##" pieces, which keeps tokenisation realistic (whole
words, sub-word pieces) and the embedding matrix at its real size.
"""

from __future__ import annotations

import itertools
import string

SPECIAL_LAYOUT_SIZE = 104  # [PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK]

COMMON_WORDS = """
a an the of in on at with and or to from by for near under over next behind front top
picture photo image close up view group couple
man woman person people boy girl child children baby player men women kids
cat cats dog dogs horse bird birds cow sheep bear elephant giraffe zebra animal
car truck bus train bike bicycle motorcycle plane boat street road sign light
table chair bed couch room kitchen window door wall floor house building city
tree trees grass field water beach ocean sky snow mountain park garden flowers
food plate pizza cake sandwich bowl cup bottle glass phone laptop computer book
shirt hat ball frisbee kite umbrella bag
red blue green yellow white black brown orange pink purple gray
sitting standing walking running riding holding eating playing looking lying flying
is are its there some two three many small large big old young little
""".split()  # noqa: SIM905 - a word list reads better as prose


def _made_up_words() -> itertools.chain[str]:
    consonants = "bdfgklmnprstvz"
    vowels = "aeiou"
    syllables = [c + v for c, v in itertools.product(consonants, vowels)]
    two = ("".join(pair) for pair in itertools.product(syllables, repeat=2))
    three = ("".join(triple) for triple in itertools.product(syllables, repeat=3))
    return itertools.chain(syllables, two, three)


def build_vocab(size: int) -> list[str]:
    """A vocabulary of exactly `size` unique tokens in BERT's special-token layout."""
    if size < SPECIAL_LAYOUT_SIZE + 100:
        raise ValueError(f"vocabulary size must be at least {SPECIAL_LAYOUT_SIZE + 100}")
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(tokens)
    pieces = itertools.chain(
        COMMON_WORDS,
        string.punctuation,
        string.digits,
        string.ascii_lowercase,
        ("##" + ch for ch in string.ascii_lowercase + string.digits),
        ("##" + word if index % 4 == 3 else word for index, word in enumerate(_made_up_words())),
    )
    for token in pieces:
        if len(tokens) == size:
            break
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    return tokens
