"""A Snakemake console a person can follow: one line per job start and end, progress with an ETA.

Snakemake's default console prints each job's inputs (a stage's ~30 code inputs), its reason and, with
`--printshellcmds`, its command, so the progress line is lost. This handler prints, in a real run, one
line when a job starts (rule, wildcards, log file) and one when it ends (its time, the steps done of
all, the jobs running, the time left); a failed job gets one line and its log. Everything else goes
through Snakemake's own handler unchanged: the job stats, warnings, errors, `--printshellcmds`
commands, and the whole of a dry run (`-n` lists the plan in full, as always). The complete record of
every job, inputs included, stays in `.snakemake/log/`, and a `jowa` job's log starts with its command.

Plain lines, no cursor movement, so it reads the same in a terminal, a CI log or under `dvc repro`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from snakemake.logging import ColorizingTextHandler, DefaultFilter, DefaultFormatter, show_logs
from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent

from snakemake_logger_plugin_jowa.clock import JobClock, duration

__all__ = ["LogHandler"]

#: Snakemake's scheduling chatter, one line each, which says nothing a person acts on.
_CHATTER = (
    "Assuming unrestricted shared filesystem usage",
    "Building DAG of jobs",
    "Using shell:",
    "Provided cores:",
    "Rules claiming more threads will be scaled down",
    "Select jobs to execute",
    "host:",
    "Write-protecting output file",  # each protected() output of a raw run, once per file
)
_SILENT = {LogEvent.WORKFLOW_STARTED, LogEvent.JOB_STARTED, LogEvent.RESOURCES_INFO}


class LogHandler(LogHandlerBase):
    """Job lines for real runs; Snakemake's own handler for the rest."""

    def __post_init__(self) -> None:
        settings = self.common_settings
        self.default = ColorizingTextHandler(
            nocolor=settings.nocolor,
            stream=sys.stdout if settings.stdout else sys.stderr,
            formatter=DefaultFormatter(settings.quiet, settings.show_failed_logs),
            filter=DefaultFilter(
                settings.quiet, settings.debug_dag, settings.verbose, settings.dryrun, settings.printshellcmds
            ),
        )
        self.clock = JobClock()
        self.jobs: dict[int, dict[str, Any]] = {}  # job id -> its JOB_INFO fields
        self.done, self.total = 0, 0

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # Snakemake's filter sits on `self.default`

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a console fault must not stop the listener thread, and so all logging
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if self.common_settings.dryrun or not self.default.filter(record):
            self.default.handle(record)
        elif event in _SILENT or (event is None and _is_chatter(record)):
            return
        elif event == LogEvent.RUN_INFO:
            self.clock.plan(record.stats)
            self.total = record.stats.get("total", 0)
            self.default.handle(record)
        elif event == LogEvent.JOB_INFO:
            self._started(record)
        elif event == LogEvent.JOB_FINISHED:
            self._finished(record)
        elif event == LogEvent.PROGRESS:
            self.done, self.total = record.done, record.total
        elif event == LogEvent.JOB_ERROR:
            self._failed(record)
        else:
            self.default.handle(record)

    def _started(self, record: logging.LogRecord) -> None:
        job = record.jobid
        self.jobs[job] = {"rule": record.rule_name, "wildcards": record.wildcards, "log": record.log}
        self.clock.start(job, record.rule_name, time.monotonic())
        log = f", log {', '.join(record.log)}" if record.log else ""
        self._line(f"start  {self._job_name(job)}  (job {job}{log})")

    def _finished(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        ended = self.clock.finish(record.job_id, now)
        self.done += 1
        took = f" in {duration(ended[1])}" if ended else ""
        left = self.clock.eta(now)
        eta = "" if left is None or self.done >= self.total else f", ETA {duration(left)}"
        steps = f"{self.done} of {self.total} steps ({_percent(self.done, self.total)}) done"
        running = f"{len(self.clock.running)} running"
        self._line(f"done   {self._job_name(record.job_id)}{took}  ·  {steps}, {running}{eta}")

    def _failed(self, record: logging.LogRecord) -> None:
        ended = self.clock.finish(record.jobid, time.monotonic())
        took = f" after {duration(ended[1])}" if ended else ""
        logs = list(record.log or [])
        where = f"; log {', '.join(logs)}" if logs else ""
        self._line(f"FAILED {self._job_name(record.jobid)}{took}  (job {record.jobid}{where})", failed=True)
        if record.shellcmd and self.common_settings.printshellcmds:
            self._write(f"    command: {record.shellcmd.strip()}")
        if self.common_settings.show_failed_logs:
            for line in show_logs(logs):
                self._write(line)

    def _job_name(self, job: int) -> str:
        info = self.jobs.get(job)
        if info is None:
            return f"job {job}"
        wildcards = " ".join(f"{k}={v}" for k, v in (info["wildcards"] or {}).items())
        return f"{info['rule']} {wildcards}".rstrip()

    def _line(self, text: str, failed: bool = False) -> None:
        stamp = time.strftime("%H:%M:%S")
        if not self.default.nocolor:
            text = f"\033[{31 if failed else 32}m{text}\033[0m"
        self._write(f"{stamp}  {text}")

    def _write(self, text: str) -> None:
        """To Snakemake's stream; records come one at a time, from its queue's listener thread."""
        self.default.stream.write(text + "\n")
        self.default.flush()


def _is_chatter(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return record.levelno == logging.INFO and message.startswith(_CHATTER)


def _percent(done: int, total: int) -> str:
    return "100%" if total and done >= total else f"{100 * done // max(total, 1)}%"
