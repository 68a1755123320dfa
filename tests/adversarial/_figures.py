"""The adversarial suite's figures: one row per scenario, printed at the end of the run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """What one scenario did, what the healthy modules beside it saw, and what the daemon
    held meanwhile (``_resources.watch_daemon``: None where the scenario has no daemon to
    watch through its attack, e.g. one it kills on purpose)."""

    scenario: str
    bad_inputs: int = 0
    crashes_survived: int = 0
    answered: int = 0
    failed: int = 0
    events_lost: int = 0
    data_lost: int = 0
    #: The daemon's resident memory when the attack began, MiB.
    rss_start: float | None = None
    #: Its peak resident memory during the attack (VmHWM), above the start, MiB.
    rss_peak: float | None = None
    #: Its resident memory once the attack was over, above the start, MiB (glibc and
    #: Python keep some freed memory: this says how much was not given back).
    rss_after: float | None = None
    #: Its most private writable memory during the attack (VmData, what RLIMIT_DATA
    #: limits; sampled), above the start, MiB.
    data_peak: float | None = None
    #: Its most open files during the attack (sampled), above the start.
    fds_peak: int | None = None
    #: Its open files once the attack was over, above the start (negative: a module the
    #: attack ended, e.g. failed, has no process left).
    fds_after: int | None = None
    #: The room its memory was given, MiB, if the scenario ran with it limited
    #: (``_resources.memory_limited``).
    mem_limit: int | None = None


#: The columns after the scenario's name: heading, attribute, how the TOTAL line sums
#: them (the counts add up; for what the daemon held, the worst scenario's figure).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("bad inputs", "bad_inputs", "sum"),
    ("crashes", "crashes_survived", "sum"),
    ("answered", "answered", "sum"),
    ("failed", "failed", "sum"),
    ("ev lost", "events_lost", "sum"),
    ("data lost", "data_lost", "sum"),
    ("rss MiB", "rss_start", "max"),
    ("peak +MiB", "rss_peak", "max"),
    ("after +MiB", "rss_after", "max"),
    ("data +MiB", "data_peak", "max"),
    ("fds peak +", "fds_peak", "max"),
    ("fds after +", "fds_after", "max"),
    ("limit +MiB", "mem_limit", "min"),
)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(round(value))  # (not "-0")
    return str(value)


def _total(values: list[object], how: str) -> object:
    measured = [v for v in values if isinstance(v, int | float)]
    if not measured:
        return None
    if how == "sum":
        return sum(measured)
    return max(measured) if how == "max" else min(measured)


@dataclass
class Figures:
    rows: list[Row] = field(default_factory=list)

    def row(self, scenario: str) -> Row:
        row = Row(scenario)
        self.rows.append(row)
        return row

    def render(self) -> list[str]:
        head = ("scenario", *(heading for heading, _, _ in COLUMNS))
        values = [[getattr(r, attr) for _, attr, _ in COLUMNS] for r in self.rows]
        body = [(r.scenario, *map(_cell, v)) for r, v in zip(self.rows, values, strict=True)]
        totals = (_total([v[i] for v in values], how) for i, (_, _, how) in enumerate(COLUMNS))
        total = (f"TOTAL ({len(self.rows)} scenarios; the daemon: worst)", *map(_cell, totals))
        width = [max(len(x[i]) for x in [head, *body, total]) for i in range(len(head))]

        def fmt(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(width[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], width[1:], strict=True))
            return "  ".join([first, *rest])

        rule = "-" * len(fmt(head))
        return [fmt(head), rule, *(fmt(b) for b in body), rule, fmt(total)]


#: The session's figures (one collector per pytest process).
FIGURES = Figures()
