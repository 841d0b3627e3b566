"""A run's tokenizer in the form llama.cpp tokenizes identically: the GGUF `tokenizer.*` keys.

    vocab = gguf_vocab(tokenizer)          # GGUFVocab: model, pre, tokens, types, merges, ...
    vocab.write(writer)                    # into a gguf.GGUFWriter, with the special tokens

Byte-level BPE is GPT-2's own scheme, so it goes over as it is: llama.cpp's `gpt2` model,
the tokens in GPT-2's printable byte alphabet, the merges in rank order, and the `gpt-2`
pre-tokenizer (the regex our `ByteLevel` pre-tokenizer uses).

The char tokenizer (a BPE model without merges, with byte fallback) becomes llama.cpp's
`llama` (SentencePiece) model, which does exactly what ours does when no two symbols merge
into a token: each character that is in the vocabulary is its token, any other character is
spelled as its UTF-8 bytes with the `<0xNN>` tokens (type BYTE). That model writes a space as
U+2581 before it looks anything up, so the space token is stored as U+2581 (and a corpus that
already contains U+2581 cannot be exported); no space prefix, no BOS. Both cases are proved
against the real llama.cpp by `make gguf-test` (tests/gguf_check.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from gguf import GGUFWriter, TokenType
from tokenizers import Tokenizer, decoders

from core.errors import UserError
from core.tokens import byte_fallback
from training.tokenizer import EOS, char_table, eos_id

SPM_SPACE = "\u2581"          # how llama.cpp's SentencePiece tokenizer writes a space


@dataclass(frozen=True)
class GGUFVocab:
    model: str                           # tokenizer.ggml.model: "gpt2" (BPE) or "llama" (SPM)
    tokens: list[str]                    # by id
    types: list[int]                     # gguf.TokenType by id
    eos: int
    pre: str | None = None               # the BPE pre-tokenizer's name
    merges: list[str] | None = None      # "left right", in rank order

    def write(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        if self.model == "llama":
            w.add_token_scores([0.0] * len(self.tokens))   # no merges: scores never decide
            w.add_add_space_prefix(False)
        # One token ends a document, and nothing is ever added in front of a prompt.
        w.add_eos_token_id(self.eos)
        w.add_bos_token_id(self.eos)
        w.add_pad_token_id(self.eos)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)


def _special_ids(tok: Tokenizer) -> set[int]:
    return {i for i, t in tok.get_added_tokens_decoder().items() if t.special}


def _pieces(tok: Tokenizer) -> list[str]:
    pieces = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    if any(p is None for p in pieces):
        raise UserError("the run's tokenizer.json has gaps in its token ids; retrain it")
    return pieces


def bpe_vocab(tok: Tokenizer, spec: dict) -> GGUFVocab:
    pre = spec.get("pre_tokenizer") or {}
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex"), spec.get("normalizer")) != \
            ("ByteLevel", False, True, None):
        raise UserError("the run's BPE tokenizer is not GPT-2's byte-level scheme (ByteLevel pre-tokenizer "
                        "with its regex, no prefix space, no normalizer); retrain it with this version")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = _special_ids(tok)
    types = [TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(tok.get_vocab_size())]
    return GGUFVocab("gpt2", _pieces(tok), [int(t) for t in types], eos_id(tok), pre="gpt-2", merges=merges)


def char_vocab(tok: Tokenizer, spec: dict) -> GGUFVocab:
    pieces, special = _pieces(tok), _special_ids(tok)
    if not spec["model"].get("byte_fallback"):
        raise UserError("the run's char tokenizer has no byte fallback; retrain it with this version")
    if SPM_SPACE in pieces:
        raise UserError(f"the corpus contains U+2581 ({SPM_SPACE}), which llama.cpp's tokenizer uses for a "
                        f"space: the char tokenizer cannot be exported to GGUF; remove it from the corpus "
                        f"or use --tokenizer bpe")
    tokens, types = [], []
    for i, piece in enumerate(pieces):
        if i in special:
            kind = TokenType.CONTROL
        elif byte_fallback(piece) is not None:
            kind = TokenType.BYTE
        else:
            kind = TokenType.NORMAL
        tokens.append(SPM_SPACE if piece == " " else piece)
        types.append(int(kind))
    missing = 256 - types.count(int(TokenType.BYTE))
    if missing:
        raise UserError(f"the run's char tokenizer lacks {missing} of the 256 <0xNN> byte tokens; retrain it")
    return GGUFVocab("llama", tokens, types, eos_id(tok))


def gguf_vocab(tok: Tokenizer) -> GGUFVocab:
    """The GGUF form of one of training/tokenizer.py's two tokenizers; UserError for others."""
    if tok.token_to_id(EOS) is None:
        raise UserError(f"the run's tokenizer has no {EOS} token; retrain it with this version")
    spec = json.loads(tok.to_str())
    if char_table(tok) is not None:
        return char_vocab(tok, spec)
    if spec["model"]["type"] == "BPE" and isinstance(tok.decoder, decoders.ByteLevel):
        return bpe_vocab(tok, spec)
    raise UserError("the run's tokenizer is neither shelley's char nor its byte-level BPE tokenizer; "
                    "retrain with --tokenizer char or bpe")
