"""The parallel layout's sizes and the rules between them, in one place (torchtitan's
`ParallelDims` is the model). Pure arithmetic: no torch or megatron import, so `plan`,
`model info`, validate() and the curriculum plan use it on a login node.

megatron-core 0.16's `initialize_model_parallel` lays ranks out tp-cp-ep-dp-pp: the dense
data-parallel size is world / (tp*pp*cp); experts are laid out inside each pipeline stage's
dp*cp*tp ranks as ep*expert_tp groups, the rest being expert data parallelism. Under context
parallelism a sequence is cut into 2*cp chunks (rank r holds chunks r and 2*cp-1-r), and
sequence parallelism splits each CP rank's tokens over tp.

Each rule is a method returning the broken rule's text (None when it holds), so a caller names
its own field and value in the ConfigError (`train.seq_length_tokens`, `niah.lengths`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exaone_train.errors import ConfigError


@dataclass(frozen=True)
class ParallelDims:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int = 1  # expert tensor parallelism (parallel.expert_tp, defaulting to tp)
    sequence_parallel: bool = False
    world_size: int | None = None  # None: not known yet (a recipe on its own)

    @classmethod
    def of(cls, p: Any, world_size: int | None = None) -> ParallelDims:
        """The dims of a ParallelConfig (or anything with its fields) on `world_size` ranks."""
        return cls(p.tp, p.pp, p.cp, p.ep, p.etp, p.sequence_parallel, world_size)

    @property
    def model_parallel(self) -> int:
        """Ranks holding one copy of the model: tp*pp*cp."""
        return self.tp * self.pp * self.cp

    @property
    def dp(self) -> int:
        """The dense data-parallel size (the world must be known and fit: `check_world`)."""
        return self._world() // self.model_parallel

    @property
    def expert_dp(self) -> int:
        """Data parallelism of the experts: world / (expert_tp*ep*pp)."""
        return self._world() // (self.etp * self.ep * self.pp)

    def _world(self) -> int:
        assert self.world_size is not None, "ParallelDims without a world size has no dp"
        return self.world_size

    def describe(self) -> str:
        """'tp2 pp1 cp1 ep2' (+ ' dp4' when the world is known), for log lines and errors."""
        text = f"tp{self.tp} pp{self.pp} cp{self.cp} ep{self.ep}"
        return text if self.world_size is None or self.world_rule() else f"{text} dp{self.dp}"

    # ---- rules ---------------------------------------------------------------------------
    def world_rule(self) -> str | None:
        """tp*pp*cp must divide the world size."""
        world = self._world()
        if world >= 1 and world % self.model_parallel == 0:
            return None
        return (f"parallel.tp*pp*cp = {self.tp}*{self.pp}*{self.cp} = {self.model_parallel} "
                f"must divide the world size {world}")

    def expert_rule(self) -> str | None:
        """ep*expert_tp must divide each pipeline stage's dp*cp*tp ranks (an MoE model)."""
        group, ranks = self.ep * self.etp, self.dp * self.cp * self.tp
        if ranks % group == 0:
            return None
        return (f"ep*expert_tp = {self.ep}*{self.etp} = {group} must divide DP*CP*TP = "
                f"{self.dp}*{self.cp}*{self.tp} = {ranks} (megatron-core lays experts out "
                f"within each pipeline stage's data*context*tensor ranks; "
                f"world_size={self.world_size})")

    def seq_rule(self, seq_len_tokens: int) -> str | None:
        """A sequence of this length must cut into 2*cp chunks, and each CP rank's share must
        split over tp under sequence parallelism."""
        if self.cp > 1 and seq_len_tokens % (2 * self.cp):
            return (f"must be divisible by 2*parallel.cp={2 * self.cp} (load-balanced CP "
                    "chunks)")
        if self.sequence_parallel and (seq_len_tokens // self.cp) % self.tp:
            share = f"each CP rank's {seq_len_tokens // self.cp}" if self.cp > 1 else "its"
            return (f"{share} tokens must split over parallel.tp={self.tp} (sequence "
                    "parallelism)")
        return None

    def check_world(self, moe: bool, field: str = "world_size") -> None:
        """ConfigError when the layout does not fit the world (`field` names the world size)."""
        rule = self.world_rule()
        if rule:
            raise ConfigError(field, self.world_size, rule)
        rule = self.expert_rule() if moe else None
        if rule:
            raise ConfigError("parallel.ep", self.ep, rule)

    def check_seq(self, seq_len_tokens: int, field: str = "train.seq_length_tokens") -> None:
        rule = self.seq_rule(seq_len_tokens)
        if rule:
            raise ConfigError(field, seq_len_tokens, rule)
