"""A report table written three ways through pandas: Markdown (README, `snakemake --report`), LaTeX
(booktabs, `Styler.to_latex`) and CSV.

Cells are strings already formatted by the caller; a missing result is the cell "not run" (never a zero).
Each is one `DataFrame` of strings; Markdown keeps every cell as written (no number parsing), and an
aggregate row gets a booktabs `\\midrule` above it in LaTeX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from jowa.core.atomic import atomic_file

NOT_RUN = "not run"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    rule_before: set[int] = field(default_factory=set)  # row indices preceded by a rule (aggregate rows)
    note: str = ""  # a sentence below the table (Markdown) or above it (a LaTeX comment); not in the CSV

    def add(self, row: list[str], *, rule: bool = False) -> None:
        if len(row) != len(self.header):
            raise ValueError(f"{self.title}: row of {len(row)} cells for {len(self.header)} columns")
        if rule:
            self.rule_before.add(len(self.rows))
        self.rows.append(row)

    def frame(self) -> pd.DataFrame:
        """The cells, with the header as column names."""
        return pd.DataFrame(self.rows, columns=self.header, dtype="string")

    def markdown(self) -> str:
        align = ("left",) + ("right",) * (len(self.header) - 1)
        body = self.frame().to_markdown(index=False, colalign=align, disable_numparse=True)
        note = f"\n{self.note}\n" if self.note else ""
        return f"**{self.title}**\n\n{body}\n{note}"

    def latex(self) -> str:
        first = self.header[0]
        styler = self.frame().style.hide(axis="index").format_index(escape="latex", axis=1)
        styler = styler.format(lambda cell: cell.replace("±", "$\\pm$"), escape="latex")
        ruled = sorted(self.rule_before)
        if ruled:  # `\midrule` as the row's first token: booktabs' rule between body rows
            styler = styler.format(lambda cell: f"\\midrule {cell}", escape="latex", subset=(ruled, first))
        body = styler.to_latex(column_format="l" + "r" * (len(self.header) - 1), hrules=True)
        note = f"% {self.note}\n" if self.note else ""
        return f"% {self.title}\n{note}{body}"

    def csv(self) -> str:
        return self.frame().to_csv(index=False, lineterminator="\n")

    def write(self, base: Path) -> list[Path]:
        """base.md, base.tex and base.csv, each written atomically."""
        paths = []
        for suffix, text in ((".md", self.markdown()), (".tex", self.latex()), (".csv", self.csv())):
            path = base.with_suffix(suffix)
            with atomic_file(path) as tmp:
                tmp.write_text(text)
            paths.append(path)
        return paths
