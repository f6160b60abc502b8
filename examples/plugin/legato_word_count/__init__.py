"""``word_count``: a Legato step type shipped as a plugin.

A definition writes the config fields beside the common step fields::

    - id: count
      type: word_count
      text: "${params.text}"
      top: 3

Outputs: ``words`` (how many), ``distinct`` and ``top`` (the most frequent, ``[word, count]`` pairs).
An empty text fails the attempt (``PluginStepFailed``), which the step's retry policy then handles.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Annotated, Any

import msgspec

from legato.core.step_types import PluginStepFailed, StepCall, StepType

WORD = re.compile(r"[\w']+")


class WordCountConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The step's own fields; msgspec checks them when the definition is pushed."""

    text: str
    top: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    lowercase: bool = True
    pause: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds to wait before counting (to show that the step can be cancelled)."""


async def count_words(call: StepCall[WordCountConfig]) -> dict[str, Any]:
    config = call.config
    if config.pause:
        await asyncio.sleep(config.pause)
    text = config.text.lower() if config.lowercase else config.text
    words = WORD.findall(text)
    if not words:
        raise PluginStepFailed("nothing to count: the text has no words")
    counts = Counter(words)
    return {
        "words": len(words),
        "distinct": len(counts),
        "top": [[word, n] for word, n in counts.most_common(config.top)],
    }


step_type = StepType(
    name="word_count",
    config=WordCountConfig,
    run=count_words,
    cancellable=True,
    description="Counts the words of a text",
)
