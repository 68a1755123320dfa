"""The adversarial suite's figures: one row per scenario, printed at the end of the run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """What one scenario did and what the healthy modules beside it saw."""

    scenario: str
    bad_inputs: int = 0
    crashes_survived: int = 0
    answered: int = 0
    failed: int = 0
    events_lost: int = 0
    data_lost: int = 0


@dataclass
class Figures:
    rows: list[Row] = field(default_factory=list)

    def row(self, scenario: str) -> Row:
        row = Row(scenario)
        self.rows.append(row)
        return row

    def render(self) -> list[str]:
        head = ("scenario", "bad inputs", "crashes", "answered", "failed", "ev lost", "data lost")
        body = [
            (r.scenario, r.bad_inputs, r.crashes_survived, r.answered, r.failed, r.events_lost,
             r.data_lost)
            for r in self.rows
        ]  # fmt: skip
        total = (
            f"TOTAL ({len(self.rows)} scenarios)",
            *(sum(int(str(b[i])) for b in body) for i in range(1, 7)),
        )
        width = [max(len(str(x[i])) for x in [head, *body, total]) for i in range(7)]

        def fmt(cells: tuple[object, ...]) -> str:
            first = str(cells[0]).ljust(width[0])
            rest = (str(c).rjust(w) for c, w in zip(cells[1:], width[1:], strict=True))
            return "  ".join([first, *rest])

        rule = "-" * len(fmt(head))
        return [fmt(head), rule, *(fmt(b) for b in body), rule, fmt(total)]


#: The session's figures (one collector per pytest process).
FIGURES = Figures()
