from blipq.engine_build.vocab import build_vocab


def test_bert_special_token_layout_and_exact_size() -> None:
    vocab = build_vocab(30522)
    assert len(vocab) == 30522 == len(set(vocab))
    assert vocab[0] == "[PAD]"
    assert vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"a", "picture", "of", "##s"} <= set(vocab)
    assert sum(token.startswith("##") for token in vocab) > 5000


def test_small_vocabulary_is_a_prefix_of_the_large_one() -> None:
    assert build_vocab(1000) == build_vocab(30522)[:1000]
