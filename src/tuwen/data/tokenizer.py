"""A small WordPiece tokenizer trained on the captions and questions of a dataset.

Models trained from scratch (the shapes configs) need a vocabulary of their own; it is
trained with Hugging Face ``tokenizers`` and wrapped as a ``PreTrainedTokenizerFast`` so the
rest of tuwen treats it exactly like a hub tokenizer (``save_pretrained``, ``decode``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import WordPieceTrainer
from transformers import PreTrainedTokenizerFast

from tuwen.model_files import TEXT_TOKENIZER_DIR

# Order fixes the ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [BOS]=4, [EOS]=5, [MASK]=6
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]", "[MASK]")
CONTINUING_PREFIX = "##"
DEFAULT_MAX_LENGTH = 128  # captions and questions are short; COCO's longest is ~50 words
# A model whose text encoder and language model bring different tokenizers keeps the LM's
# (captions, prompts, generated answers) in the model folder and the text encoder's (ITC/ITM,
# classified questions) in this subfolder; models.image_text_model writes the same name.
_MAX_CHARS_PER_WORD = 100  # longer "words" (URLs, garbage) become a single [UNK]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1000, min_frequency: int = 1,
                    model_max_length: int = DEFAULT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Train a lowercase BERT-style WordPiece tokenizer; the same texts give the same vocab."""
    corpus = [text for text in texts if text.strip()]
    if not corpus:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    trainee = _bert_pipeline(Tokenizer(_wordpiece({})))
    # tokenizers (<= 0.23, huggingface/tokenizers#1794) numbers the "##x" pieces in hash-map
    # order, and merge ties are broken by those numbers, so two runs on the same texts can
    # learn different vocabularies. Declaring the pieces up front, sorted, fixes their ids.
    pieces = _continuing_pieces(trainee, corpus)
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                               special_tokens=[*SPECIAL_TOKENS, *pieces], show_progress=False,
                               continuing_subword_prefix=CONTINUING_PREFIX)
    trainee.train_from_iterator(corpus, trainer=trainer)
    # Rebuild from the learnt vocab alone: the trainer also registered the "##x" pieces as
    # special tokens, which decode(skip_special_tokens=True) would then drop.
    vocab = trainee.get_vocab(with_added_tokens=False)
    return _wrap(_bert_pipeline(Tokenizer(_wordpiece(vocab)), vocab), model_max_length)


def _wordpiece(vocab: dict[str, int]) -> models.WordPiece:
    return models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=_MAX_CHARS_PER_WORD,
                            continuing_subword_prefix=CONTINUING_PREFIX)


def _bert_pipeline(tok: Tokenizer, vocab: dict[str, int] | None = None) -> Tokenizer:
    """Normaliser, pre-tokenizer and decoder of BERT uncased; post-processor once ids exist."""
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUING_PREFIX)
    if vocab is not None:
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def _continuing_pieces(tok: Tokenizer, corpus: list[str]) -> list[str]:
    """Every "##c" piece the trainer would create: non-initial characters of each word."""
    chars: set[str] = set()
    for text in corpus:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [CONTINUING_PREFIX + c for c in sorted(chars)]


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    pad, unk, cls, sep, bos, eos, mask = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep,
        bos_token=bos, eos_token=eos, mask_token=mask, model_max_length=model_max_length)


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))


def save_text_tokenizer(tok: PreTrainedTokenizerFast | None, directory: str | Path) -> None:
    """The text encoder's own tokenizer, when it has one, into ``directory/text_tokenizer``
    (the decoder's stays in ``directory`` itself, where every tool looks for it)."""
    if tok is not None:
        save_tokenizer(tok, Path(directory) / TEXT_TOKENIZER_DIR)


def _first_line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


_SPACE_BEFORE = re.compile(r"\s+([.,!?;:%)\]}])")
_SPACE_AFTER = re.compile(r"([(\[{])\s+")
_SPACED_JOINER = re.compile(r"(\w)\s+(['’\-/])\s+(?=\w)")


def decode_text(tok: PreTrainedTokenizerFast, ids: Sequence[int]) -> str:
    """Token ids back to readable text: no special tokens, punctuation attached.

    The WordPiece decoder already attaches ``. , ! ?``; BERT's pre-tokenizer also splits off
    ``; : ) ( ' -``, which would come back spaced ("it ' s", "a - b") without this tidy-up.
    """
    text = tok.decode(ids, skip_special_tokens=True)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _SPACED_JOINER.sub(r"\1\2", text)
    return " ".join(text.split())
