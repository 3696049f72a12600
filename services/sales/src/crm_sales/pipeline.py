"""Sales pipelines, as data. Every tenant uses the default pipeline for now; `pipeline_for` is the one place
that will look up a tenant's own pipeline when they become configurable."""

from __future__ import annotations

from dataclasses import dataclass

from crm.sales.v1 import sales_pb2

OPEN = "open"
WON = "won"
LOST = "lost"
STATUSES = (OPEN, WON, LOST)


@dataclass(frozen=True)
class Stage:
    key: str
    name: str
    probability: int  # percent
    is_won: bool = False
    is_lost: bool = False

    @property
    def status(self) -> str:
        return WON if self.is_won else LOST if self.is_lost else OPEN


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.stages)

    @property
    def first(self) -> Stage:
        return self.stages[0]

    def stage(self, key: str) -> Stage:
        for s in self.stages:
            if s.key == key:
                return s
        raise KeyError(key)

    def to_message(self) -> sales_pb2.Pipeline:
        return sales_pb2.Pipeline(
            name=self.name,
            stages=[
                sales_pb2.PipelineStage(
                    key=s.key, name=s.name, probability=s.probability, is_won=s.is_won, is_lost=s.is_lost
                )
                for s in self.stages
            ],
        )


DEFAULT_PIPELINE = Pipeline(
    name="Default",
    stages=(
        Stage("qualification", "Qualification", 10),
        Stage("needs_analysis", "Needs analysis", 20),
        Stage("proposal", "Proposal", 50),
        Stage("negotiation", "Negotiation", 75),
        Stage("closed_won", "Closed won", 100, is_won=True),
        Stage("closed_lost", "Closed lost", 0, is_lost=True),
    ),
)


def pipeline_for(tenant_id: str) -> Pipeline:
    """The pipeline of `tenant_id` (the default one until pipelines are configurable per tenant)."""
    return DEFAULT_PIPELINE
