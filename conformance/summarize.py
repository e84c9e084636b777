"""Summarise an Autobahn|Testsuite fuzzingclient report (``reports/servers/index.json``).

::

    python conformance/summarize.py REPORT_DIR

Prints, per agent (one agent per adapter), how many cases ended in each behaviour
(OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ...), then every FAILED case and
every NON-STRICT one with its description, expectation and what was observed. Exits 1
when some case FAILED, else 0.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
SHOWN = ("FAILED", "NON-STRICT")


def case_key(case: str) -> tuple[int, ...]:
    """Sort case ids numerically: 1.1.2 < 1.1.10 < 2.1."""
    return tuple(int(part) for part in case.split(".") if part.isdigit())


def worst(entry: dict[str, Any]) -> str:
    """A case's verdict: its behaviour, unless its closing behaviour is worse."""
    behaviour = str(entry.get("behavior", "?"))
    closing = str(entry.get("behaviorClose", "OK"))
    if behaviour in ("OK", "NON-STRICT", "INFORMATIONAL") and closing == "FAILED":
        return "FAILED"
    if behaviour == "OK" and closing == "NON-STRICT":
        return "NON-STRICT"
    return behaviour


def plain(html: str) -> str:
    """The text of a case description (the suite writes a little HTML)."""
    text = re.sub(r"<br\s*/?>", " ", html)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\s+", " ", text).strip()


def load_case(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    report = entry.get("reportfile")
    if not report:
        return {}
    path = root / str(report)
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def summarize(root: Path, out: list[str]) -> int:
    index: dict[str, dict[str, dict[str, Any]]] = json.loads(
        (root / "index.json").read_text(encoding="utf-8")
    )
    failed_total = 0
    for agent in sorted(index):
        cases = index[agent]
        counts = Counter(worst(entry) for entry in cases.values())
        others = sorted(set(counts) - set(BEHAVIOURS))
        out.append(f"## {agent}: {len(cases)} cases")
        out.append("")
        out.append("| " + " | ".join((*BEHAVIOURS, *others)) + " |")
        out.append("|" + "---|" * (len(BEHAVIOURS) + len(others)))
        out.append("| " + " | ".join(str(counts[b]) for b in (*BEHAVIOURS, *others)) + " |")
        out.append("")
        failed_total += counts["FAILED"]
        for verdict in SHOWN:
            chosen = sorted((c for c, e in cases.items() if worst(e) == verdict), key=case_key)
            if not chosen:
                continue
            out.append(f"### {verdict} ({len(chosen)})")
            out.append("")
            for case in chosen:
                entry = cases[case]
                detail = load_case(root, entry)
                out.append(
                    f"- **{case}** behaviour {entry.get('behavior')}, closing "
                    f"{entry.get('behaviorClose')}, remote close code "
                    f"{entry.get('remoteCloseCode')}"
                )
                if detail:
                    out.append(f"  - description: {plain(str(detail.get('description', '')))}")
                    out.append(f"  - expectation: {plain(str(detail.get('expectation', '')))}")
                    out.append(f"  - result: {plain(str(detail.get('result', '')))}")
                    out.append(f"  - closing: {plain(str(detail.get('resultClose', '')))}")
                    out.append(f"  - report: {root / str(entry.get('reportfile'))}")
            out.append("")
    return failed_total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="summarise an Autobahn fuzzingclient report")
    parser.add_argument("report_dir", type=Path, help="the spec's outdir (has index.json)")
    args = parser.parse_args(argv)
    out: list[str] = []
    failed = summarize(args.report_dir, out)
    print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
