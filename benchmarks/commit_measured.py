"""File one GPU session's records as `benchmarks/measured/<date>-<gpu>.json`, for committing.

    python benchmarks/commit_measured.py /work/.device/.../records.jsonl     # the files_at of the run
    git add benchmarks/measured/ && git commit -m "GPU figures: <gpu>, <date>"

The file holds the records exactly as `benchmarks/gpu_session.sh` wrote them, under the GPU name, torch
version and commit they carry, and the ratios of ours to the reference's samples/s and peak memory per
size and batch (both measured in the same run), the figures issue 19's closing note quotes, and of ours
with the training-step levers on to ours with them off where both were measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ratios(records: list[dict]) -> list[dict]:
    """Ours (issue 19's levers on) vs the reference per (size, batch) measured by both, and vs ours with
    the levers off (`levers: none`) where that was measured too: what the levers give."""
    steps = {
        (r["impl"], r.get("levers", "all"), r["size"], r["batch"]): r
        for r in records
        if "samples_per_s" in r and "impl" in r
    }
    out = []
    for (impl, levers, size, batch), ours in sorted(steps.items()):
        if impl != "ours" or levers != "all" or ours.get("part") != "step":
            continue
        entry: dict = {"size": size, "batch": batch}
        reference = steps.get(("reference", "all", size, batch))
        if reference:
            entry |= {
                "speedup": ours["samples_per_s"] / reference["samples_per_s"],
                # the reference's peak_mem_gb is in GiB (2**30 bytes), ours in GB: compare in GiB
                "memory_ratio": ours["peak_mem_gib"] / max(reference["peak_mem_gb"], 1e-9),
            }
        off = steps.get(("ours", "none", size, batch))
        if off:
            entry |= {
                "levers_speedup": ours["samples_per_s"] / off["samples_per_s"],
                "levers_memory_ratio": ours["peak_mem_gb"] / max(off["peak_mem_gb"], 1e-9),
            }
        if len(entry) > 2:
            out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("records", type=Path, help="records.jsonl of a gpu_session.sh run")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    ours = [r for r in records if r.get("impl") == "ours" and r.get("gpu")]
    if not ours:
        raise SystemExit(f"{args.records}: no record of ours measured on a GPU")
    gpu, torch_version, commit = ours[0]["gpu"], ours[0]["torch"], ours[0]["commit"]
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = ROOT / "benchmarks" / "measured" / f"{args.date}-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"gpu": gpu, "torch": torch_version, "commit": commit, "date": args.date}
    out.write_text(json.dumps(summary | {"ratios": ratios(records), "records": records}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
