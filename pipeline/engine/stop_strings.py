"""Which rows have written a stop string: text stops (lm-eval's ``until``) for the static decoder.

The decoder stops rows on token ids; lm-eval stops on strings (``"Question:"``, ``"</s>"``), which a model
may write in any tokenization (``"\\n\\n"`` as one token or two). As lm-eval's own criterion does, each row's
last tokens are decoded and searched, with two tokens more than the longest stop string takes (a string
split over other tokens is still found), plus the steps since the decoder last looked. A row found here
only leaves the batch early: the caller still cuts the text at the first stop string, so a stop found a few
steps late (the decoder looks every ``CHECK_EVERY`` steps) changes no response.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from pipeline.engine.decode import CHECK_EVERY


class StopStrings:
    """Called with the open rows' tokens so far (``[rows, steps]``), says which rows hold a stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.strings = [s for s in strings if s]
        longest = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.strings), default=0)
        self.window = longest + 2 + CHECK_EVERY

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        if not self.strings or tokens.shape[1] == 0:
            return np.zeros(len(tokens), dtype=bool)
        texts = self.tokenizer.batch_decode(tokens[:, -self.window :].tolist())
        return np.array([any(s in text for s in self.strings) for text in texts], dtype=bool)
