"""A word-level tokenizer built from text, with no downloads (tests, the embedded demo)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

SPECIAL = ("<pad>", "<unk>", "<s>", "</s>")


def build_word_tokenizer(texts: Iterable[str], *, max_vocab: int | None = None):
    """A ``PreTrainedTokenizerFast`` over the lowercased words and punctuation of ``texts``
    (most frequent first, up to ``max_vocab``), with ``<pad>``, ``<unk>``, ``<s>`` (BOS, added
    to each encoding) and ``</s>`` (EOS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    words = [w for w, _ in counts.most_common(max_vocab)]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (GPT-2's scheme: any
    text encodes, nothing is unknown), with the special tokens of
    :func:`build_word_tokenizer` (``<s>`` added to each encoding). Deterministic for the same
    texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
