"""`iris bench seed --prompt-file`: a prompt set of one's own, as JSON or one prompt a line."""

from __future__ import annotations

from pathlib import Path

import pytest

from iris.bench.seed.run import USERS_PER_TIER, make_users, seed_prompts


def test_a_text_file_gives_one_prompt_a_line_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("Name a bird.\n\n  Why is ice slippery?  \n")
    assert seed_prompts(str(path)) == ["Name a bird.", "Why is ice slippery?"]


def test_a_json_file_gives_its_list_and_users_cycle_through_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('["a", "b", "c"]')
    users = make_users(2, seed_prompts(str(path)))
    assert len(users) == 2 * USERS_PER_TIER
    assert users[0].prompts == ("a", "b") and users[1].prompts == ("c", "a")


@pytest.mark.parametrize(
    ("name", "text", "says"), [("x.json", '{"a": 1}', "list of strings"), ("x.txt", "\n\n", "no prompts")]
)
def test_a_bad_prompt_file_is_refused_with_what_is_wrong(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=says):
        seed_prompts(str(path))


def test_the_shipped_set_is_the_default() -> None:
    assert len(seed_prompts()) >= 250
