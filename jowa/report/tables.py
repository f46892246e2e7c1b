"""A report table written three ways: Markdown (README, `snakemake --report`), LaTeX (booktabs) and CSV.

Cells are strings already formatted by the caller; a missing result is the cell "not run" (never a zero).
Written by hand rather than through pandas' `to_latex`, which needs jinja2 and escapes nothing we need.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from jowa.atomic import atomic_file

NOT_RUN = "not run"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    rule_before: set[int] = field(default_factory=set)  # row indices preceded by a rule (aggregate rows)

    def add(self, row: list[str], *, rule: bool = False) -> None:
        if len(row) != len(self.header):
            raise ValueError(f"{self.title}: row of {len(row)} cells for {len(self.header)} columns")
        if rule:
            self.rule_before.add(len(self.rows))
        self.rows.append(row)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(self.header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        def escape(text: str) -> str:
            for char in "\\&%$#_{}":
                text = text.replace(char, "\\" + char)
            return text.replace("±", "$\\pm$")

        lines = [f"% {self.title}", "\\begin{tabular}{l" + "r" * (len(self.header) - 1) + "}", "\\toprule"]
        lines.append(" & ".join(escape(cell) for cell in self.header) + " \\\\")
        lines.append("\\midrule")
        for index, row in enumerate(self.rows):
            if index in self.rule_before:
                lines.append("\\midrule")
            lines.append(" & ".join(escape(cell) for cell in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, base: Path) -> list[Path]:
        """base.md, base.tex and base.csv, each written atomically."""
        paths = []
        for suffix, text in ((".md", self.markdown()), (".tex", self.latex()), (".csv", self.csv())):
            path = base.with_suffix(suffix)
            with atomic_file(path) as tmp:
                tmp.write_text(text)
            paths.append(path)
        return paths
