"""How long the rest of a run will take, from the durations of the jobs finished so far.

Jobs of one rule take alike long and those of different rules do not (a pretraining job takes hours, an
evaluation minutes), so the work left is each rule's mean duration times its jobs not yet finished,
less what the running ones have done already. The run does that work as fast as it has done so far:
the jobs' summed time per second of wall time (the parallelism actually reached).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field


@dataclass
class JobClock:
    """Start and end times of a run's jobs, and its estimated time left."""

    left: Counter[str] = field(default_factory=Counter)  # rule -> jobs not finished yet
    running: dict[int, tuple[str, float]] = field(default_factory=dict)  # job id -> (rule, start)
    durations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    first_start: float | None = None

    def plan(self, jobs_per_rule: dict[str, int]) -> None:
        """The jobs the run will do, per rule (Snakemake's job stats)."""
        self.left = Counter({rule: n for rule, n in jobs_per_rule.items() if rule != "total"})

    def start(self, job: int, rule: str, now: float) -> None:
        self.running[job] = (rule, now)
        if self.first_start is None:
            self.first_start = now
        if self.left[rule] < len([r for r, _ in self.running.values() if r == rule]):
            self.left[rule] += 1  # a job the plan did not count (a checkpoint's)

    def finish(self, job: int, now: float) -> tuple[str, float] | None:
        """(rule, seconds) of a job that ended; None for one never seen starting."""
        if job not in self.running:
            return None
        rule, began = self.running.pop(job)
        self.durations[rule].append(now - began)
        self.left[rule] = max(0, self.left[rule] - 1)
        return rule, now - began

    def eta(self, now: float) -> float | None:
        """Seconds until the last job ends, or None before any job has finished."""
        finished = [d for ds in self.durations.values() for d in ds]
        if not finished or self.first_start is None:
            return None
        overall = sum(finished) / len(finished)
        mean = {rule: sum(ds) / len(ds) for rule, ds in self.durations.items() if ds}
        work = sum(n * mean.get(rule, overall) for rule, n in self.left.items())
        work -= sum(min(now - began, mean.get(rule, overall)) for rule, began in self.running.values())
        busy = sum(finished) + sum(now - began for _, began in self.running.values())
        parallel = max(1.0, busy / max(now - self.first_start, 1e-9))
        return max(0.0, work) / parallel


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
