"""Print the bad-input corpus as a table (issue #14).

    ILOTS_CORPUS_TABLE=/tmp/corpus.jsonl uv run pytest tests -k corpus
    uv run python benchmarks/corpus_table.py /tmp/corpus.jsonl

One row per case: its name, the exit code, whether nothing was lost (hashes of data/ and earlier
outputs unchanged), and the message the user read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    last = {row["case"]: row for row in rows}  # a case rerun keeps its latest outcome
    print("| case | exit | nothing lost | message |\n|---|---|---|---|")
    for name in sorted(last):
        row = last[name]
        message = row["message"].replace("|", "\\|")
        print(f"| {name} | {row['exit']} | {'yes' if row['nothing_lost'] else 'NO'} | {message} |")
    lost = sum(not r["nothing_lost"] for r in last.values())
    print(f"\n{len(last)} cases, {lost} lost something, exits: {sorted({r['exit'] for r in last.values()})}")


if __name__ == "__main__":
    main(sys.argv[1])
