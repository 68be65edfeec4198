"""What Fun-CosyVoice3 expects of its inputs that CosyVoice2 does not: prompt prefixes and silence limits.

Prompts. The CosyVoice3 LLM needs a ``<|endofprompt|>`` token somewhere in ``prompt text + text`` (upstream
asserts it); the text before it is a "system" prompt. Upstream leaves adding it to the caller; the engine
adds it where upstream's own examples put it, so a user passes plain text:

- sft, cross_lingual (no LLM prompt): the tts text becomes ``SYSTEM_PROMPT_PREFIX + text``. The prefix
  is part of the *text*, as upstream's examples have it, so it also counts in the decode length limits
  ``min/max_token_text_ratio x text tokens``;
- zero_shot: the prompt transcript becomes ``SYSTEM_PROMPT_PREFIX + transcript``;
- instruct: the instruction becomes ``"You are a helpful assistant. <instruction><|endofprompt|>"``
  (the form of upstream's ``instruct_list``).

A string that already contains ``<|endofprompt|>`` is taken as is. Upstream neither normalises nor
splits a string that contains ``<|`` and ``|>``; the engine normalises the plain user text and adds the
prefix afterwards (pass ``normalize=False`` to feed exactly what upstream would see).

Silence. Upstream's CosyVoice3 model keeps at most ``MAX_SILENT_RUN`` consecutive speech tokens of
``SILENT_TOKENS`` (FSQ codes of silence and breath) and drops the rest of such a run before the flow;
the LLM itself still sees every decoded token (its repetition window included).
"""

from __future__ import annotations

from cosyml.text.tokenizer import ENDOFPROMPT

#: The default CosyVoice3 system prompt (upstream's examples and instruct list).
SYSTEM_PROMPT = "You are a helpful assistant."
#: What the engine puts before plain v3 texts / transcripts: ``"You are a helpful assistant.<|endofprompt|>"``.
SYSTEM_PROMPT_PREFIX = SYSTEM_PROMPT + ENDOFPROMPT

#: Speech tokens upstream's CosyVoice3Model counts as silence or breath.
SILENT_TOKENS: frozenset[int] = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
#: Longest run of silent tokens passed on to the flow.
MAX_SILENT_RUN = 5


def has_prompt_end(text: str) -> bool:
    """Whether ``text`` already carries ``<|endofprompt|>`` (then it is used as given)."""
    return ENDOFPROMPT in text


def with_system_prompt(text: str) -> str:
    """``SYSTEM_PROMPT_PREFIX + text`` unless ``text`` already has ``<|endofprompt|>``."""
    return text if has_prompt_end(text) else SYSTEM_PROMPT_PREFIX + text


def instruct_prompt(instruction: str) -> str:
    """A plain instruction as CosyVoice3 wants it: ``"You are a helpful assistant. <instruction><|endofprompt|>"``.

    Taken as is when it contains ``<|endofprompt|>``; only the end marker is added when it already starts
    with the system prompt.
    """
    instruction = instruction.strip()
    if has_prompt_end(instruction):
        return instruction
    if instruction.startswith(SYSTEM_PROMPT):
        return instruction + ENDOFPROMPT
    return f"{SYSTEM_PROMPT} {instruction}{ENDOFPROMPT}"


class SilenceLimiter:
    """Drops silent tokens beyond a run of ``max_run`` (upstream's CosyVoice3 rule); one per segment.

    ``keep(token)`` is called for every decoded token in order; a run counts consecutive tokens of
    ``silent`` and any other token resets it.
    """

    def __init__(self, silent: frozenset[int] = SILENT_TOKENS, max_run: int = MAX_SILENT_RUN) -> None:
        self.silent = silent
        self.max_run = max_run
        self.run = 0

    def keep(self, token: int) -> bool:
        if token not in self.silent:
            self.run = 0
            return True
        self.run += 1
        return self.run <= self.max_run

    def filter(self, tokens: list[int]) -> list[int]:
        """The tokens of a whole decode that reach the flow."""
        return [t for t in tokens if self.keep(t)]


class KeepAll(SilenceLimiter):
    """CosyVoice2: every decoded token reaches the flow."""

    def __init__(self) -> None:
        super().__init__(frozenset(), 0)

    def keep(self, token: int) -> bool:
        return True
