"""What a reply is asked to be and what it took: shared by every runtime, local or served, and free
of torch so that a caller can build one before (or without) importing a model runtime."""

from __future__ import annotations

from dataclasses import dataclass


def prompt_budget(context_length: int, config: GenerationConfig) -> int:
    """Prompt tokens a chat may take: the reply gets max_new_tokens of room, but the prompt always keeps
    a quarter of the window."""
    return max(context_length - config.max_new_tokens, context_length // 4)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.7  # 0 -> greedy
    top_p: float = 0.9
    top_k: int = 40  # 0 -> no top-k cut
    repetition_penalty: float = 1.1  # 1.0 -> none
    seed: int | None = None  # same seed + same prompt + same cache state -> same reply

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.temperature < 0 or self.top_k < 0:
            raise ValueError(f"negative generation setting in {self}")
        if not 0.0 < self.top_p <= 1.0 or self.repetition_penalty <= 0:
            raise ValueError(f"top_p must be in (0, 1] and repetition_penalty > 0: {self}")


@dataclass(frozen=True)
class GenerationStats:
    """What the last call did (for the UI's status line and benchmarks)."""

    prompt_tokens: int  # prompt positions: text tokens + media rows
    reused_tokens: int  # of those, served from the previous call's KV cache
    generated_tokens: int
    dropped_messages: int  # removed by context budgeting
    prefill_seconds: float
    decode_seconds: float
    stop_reason: str  # "eos", "length", "context" or "stopped"

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0
