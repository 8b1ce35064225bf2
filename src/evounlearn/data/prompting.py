"""The one place that turns question/answer text into token ids.

Rules: use the tokenizer's chat template when it has one, otherwise the plain format
`Question: {q}\nAnswer: {a}`. The prompt and the answer are tokenised separately and concatenated,
so the boundary between them is exact; labels cover the answer tokens and the closing EOS only.
Training and scoring batches are right-padded; generation batches are left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class EncodedQA:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens
    prompt_len: int


class PromptFormatter:
    """Formats and tokenises question/answer pairs for one tokenizer."""

    def __init__(self, tokenizer, max_length: int = 512, use_chat_template: bool | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if tokenizer.pad_token_id is None:
            # Padding positions are masked out everywhere; any id works, EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no EOS token; answers must end with one")

    # -- text ---------------------------------------------------------------------------------
    def prompt_text(self, question: str, prefill: str = "") -> str:
        """The text the model sees before the answer; `prefill` starts the answer (attacks)."""
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            return text + prefill
        text = PLAIN_PROMPT.format(question=question)
        return text + (" " + prefill if prefill else "")

    def answer_text(self, answer: str) -> str:
        # In the plain format the space after "Answer:" belongs to the answer, as byte-level BPE
        # attaches a space to the word that follows it.
        return answer if self.use_chat_template else " " + answer

    # -- ids ----------------------------------------------------------------------------------
    def prompt_ids(self, question: str, prefill: str = "") -> list[int]:
        ids = self.tokenizer(self.prompt_text(question, prefill), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not self.use_chat_template and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(self.answer_text(answer), add_special_tokens=False)["input_ids"] + [self.eos_id]

    def encode(self, question: str, answer: str) -> EncodedQA:
        """Prompt ids + answer ids (+EOS); labels on the answer part. Long answers are cut at the end."""
        p = self.prompt_ids(question)
        a = self.answer_ids(answer)
        room = self.max_length - len(p)
        if room < 1:
            p = p[-(self.max_length - 1) :]
            room = 1
        a = a[:room]
        return EncodedQA(input_ids=p + a, labels=[IGNORE_INDEX] * len(p) + a, prompt_len=len(p))

    # -- batches ------------------------------------------------------------------------------
    def collate(self, items: Sequence[EncodedQA]) -> dict[str, torch.Tensor]:
        """Right-padded batch for training and scoring: input_ids, attention_mask, labels."""
        width = max(len(x.input_ids) for x in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x.input_ids)
            ids[i, :n] = torch.tensor(x.input_ids)
            labels[i, :n] = torch.tensor(x.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate_prompts(self, prompts: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-padded batch of prompts for generation."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if len(p):
                ids[i, width - len(p) :] = torch.tensor(list(p))
                mask[i, width - len(p) :] = 1
        return {"input_ids": ids, "attention_mask": mask}
