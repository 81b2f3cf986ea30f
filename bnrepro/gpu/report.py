"""The GPU check's report: one JSON file and a short Markdown table, and what the book says of it.

``bnrepro gpu-check`` (:mod:`bnrepro.gpu.check`) writes ``gpu_check.json``
and ``gpu_check.md`` to ``results/gpu/`` (a dry run never does). The README
section "GPU check" documents the fields; :func:`paper_time_sentence` is the
sentence the book's introduction prints from the latest report.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.provenance import REPO_ROOT

REPORT_DIR = REPO_ROOT / "results" / "gpu"
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
FORMAT_VERSION = 1
NONE_YET = "Not known yet: no GPU check has been measured."


def duration(seconds: float | None) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``, ``"2.1 days"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _loss_cell(check: dict | None) -> str:
    if not check:
        return "-"
    if check.get("status") != "compared":
        return check.get("status", "-")
    verdict = "agree" if check["agree"] else "DIFFER"
    return f"{verdict} (max rel. diff {check['max_rel_diff']:.1e} at steps {check['steps']})"


def totals(report: dict) -> dict:
    """Sum of the sweeps' GPU times that could be measured or extrapolated."""
    timed = [e for e in report["experiments"] if e.get("sweep_s") is not None]
    return {"sweep_s": sum(e["sweep_s"] for e in timed), "experiments_timed": len(timed),
            "experiments_not_applicable": sum(e["status"] == "not applicable" for e in report["experiments"]),
            "experiments_without_time": [e["experiment"] for e in report["experiments"]
                                         if e.get("sweep_s") is None and e["status"] != "not applicable"]}


def markdown(report: dict) -> str:
    """The report's short Markdown form: provenance, tests, bench ratios, one row per experiment."""
    p, t, b = report["provenance"], report["tests"], report["bench"]
    head = "GPU check" + (" -- DRY RUN on the CPU, not a GPU measurement" if report["dry_run"] else "")
    lines = [f"**{head}** ({p['finished_at']}): {p['device_name']}, driver {p.get('driver') or '-'}, "
             f"torch {p['torch']}, CUDA {p.get('cuda') or '-'}, {report['profile']} profile, "
             f"check wall time {duration(p['wall_s'])} (box {duration(report['plan']['total_s'])}).", ""]
    lines.append(f"- gpu-marked tests: {t['status']} ({t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('skipped', 0)} skipped)")
    if b.get("status") == "measured":
        lines.append(f"- bench: tensor-resident loop {b['tensor_loop_vs_dataloader']:.2f}x the best DataLoader "
                     f"loop; package BN {b['package_bn_vs_native']:.2f}x native BN's time "
                     f"({b['not_measured']})")
    else:
        lines.append(f"- bench: {b.get('status')} {b.get('reason', '')}".rstrip())
    tot = totals(report)
    lines += [f"- {report['profile']} sweeps, summed: {duration(tot['sweep_s'])} on this device over "
              f"{tot['experiments_timed']} experiment(s); {tot['experiments_not_applicable']} run on the CPU "
              "whatever the device", ""]
    if report.get("synthetic_data"):
        lines += [f"Random stand-ins replaced {', '.join(report['synthetic_data'])} (not on the machine): "
                  "timing only, their losses are not compared.", ""]
    lines += [f"| experiment | status | steps | steps/s | runs | sweep time | first losses vs "
              f"{report['reference_profile']} |",
              "|---|---|---|---|---|---|---|"]
    for e in report["experiments"]:
        status = e["status"] + (f" ({e['stopped_by']})" if e.get("stopped_by") else "")
        if e["status"] in ("not applicable", "error"):
            status = f"{e['status']}: {e.get('reason', '')}"
        sweep = duration(e.get("sweep_s")) + (" (measured)" if e.get("sweep_s_is") == "measured" else "")
        done = e.get("steps", f"{e['runs_measured']} run(s)" if "runs_measured" in e else "-")
        lines.append(f"| {e['experiment']} | {status} | {done} | "
                     f"{_num(e.get('steps_per_s'), '.1f')} | {e['sweep_runs']} | {sweep} | "
                     f"{_loss_cell(e.get('loss_check'))} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / JSON_NAME, out / MD_NAME
    js.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    md.write_text(markdown(report))
    return js, md


def load_latest(folder: str | Path | None = None) -> dict | None:
    """The report in ``folder`` (default ``results/gpu``), or None when there is none.

    A dry-run report is not a GPU measurement: it is refused with a ValueError
    (it should never be in ``results/gpu``).
    """
    path = Path(folder or REPORT_DIR) / JSON_NAME
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("dry_run"):
        raise ValueError(f"{path} is a dry run, not a GPU measurement: delete it")
    if report.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has report format {report.get('format')!r}; this code reads {FORMAT_VERSION}")
    return report


def paper_time_sentence(report: dict | None) -> str:
    """What the book says: how long the paper profiles would take on a GPU, from ``report``."""
    if report is None:
        return NONE_YET
    tot, p = totals(report), report["provenance"]
    text = (f"Measured by the GPU check on {p['device_name']} ({p['finished_at'][:10]}): the paper profiles' "
            f"sweeps would take about {duration(tot['sweep_s'])} of GPU time in all, extrapolated from short "
            f"slices of {tot['experiments_timed']} experiment(s)")
    if tot["experiments_without_time"]:
        text += f"; not timed: {', '.join(tot['experiments_without_time'])}"
    return text + (f"; {tot['experiments_not_applicable']} measurement(s) run on the CPU whatever the device."
                   if tot["experiments_not_applicable"] else ".")
