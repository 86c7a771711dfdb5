"""Reading a JSON array item by item gives what json.load gives, whatever the layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ilots.core.errors import IlotsError
from ilots.core.files import NotAnArray, iter_json_array


def test_items_match_a_whole_file_parse_for_any_layout(tmp_path: Path) -> None:
    rng = random.Random(0)
    values = [1, 12345678901234, -3.5e10, 'é"x\n', None, True, [], {},
              {"rle": [1, 2, 3], "points": [[10.25, 5.5]], "name": "ü" * 40}]  # fmt: skip
    path = tmp_path / "export.json"
    for _ in range(200):
        items = [rng.choice(values) for _ in range(rng.randint(0, 25))]
        text = json.dumps(items, indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5)
        path.write_text(text, encoding="utf-8")
        assert list(iter_json_array(path)) == items, text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "not valid JSON"),
        ("[1, 2", "not valid JSON"),
        ("[1 2]", "not valid JSON"),
        ("[1,]", "not valid JSON"),
        ("[1] x", "not valid JSON"),
        ('{"tasks": []}', "not a JSON array"),
    ],
)
def test_broken_or_other_json_is_a_clear_error_naming_the_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(text)
    with pytest.raises(IlotsError, match=f"export {path}.*{error}") as info:
        list(iter_json_array(path, "export"))
    assert isinstance(info.value, NotAnArray) == (error == "not a JSON array")
