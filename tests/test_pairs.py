"""Prompt-pair files: both key sets in JSON, JSONL and CSV; clear errors; round trips; fuzzing."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varerase.data.pairs import PromptPair, load_pairs, save_pairs
from varerase.errors import DataError

PAIRS = [
    PromptPair("a photo of a cat", "a photo of a dog"),
    PromptPair('a "nude" figure, painted', "a clothed figure, painted"),
]
KEYS = {"svare": ("original_prompt", "modified_prompt"), "ear": ("unsafe_prompt", "safe_prompt")}


def write_records(path: Path, records: list[dict[str, str]], newline: str = "\n") -> Path:
    """Write ``records`` in the format of ``path``'s extension, by hand (not through save_pairs)."""
    if path.suffix == ".json":
        text = json.dumps(records, indent=2)
    elif path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("keys", ["svare", "ear"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_both_key_sets_load_to_the_same_pairs_in_every_file_kind(tmp_path: Path, keys: str, suffix: str) -> None:
    target_key, anchor_key = KEYS[keys]
    records = [{target_key: f"  {p.target} ", anchor_key: p.anchor, "extra": "ignored"} for p in PAIRS]
    assert load_pairs(write_records(tmp_path / f"pairs{suffix}", records)) == PAIRS


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_bom_and_windows_line_endings_are_accepted(tmp_path: Path, suffix: str) -> None:
    records = [{"unsafe_prompt": p.target, "safe_prompt": p.anchor} for p in PAIRS]
    path = write_records(tmp_path / f"pairs{suffix}", records, newline="\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_pairs(path) == PAIRS


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_concept_column_is_read(tmp_path: Path, suffix: str) -> None:
    records = [
        {"original_prompt": "a cat", "modified_prompt": "a dog", "concept": "cat"},
        {"original_prompt": "a car", "modified_prompt": "a bike", "concept": ""},
    ]
    pairs = load_pairs(write_records(tmp_path / f"pairs{suffix}", records))
    assert [p.concept for p in pairs] == ["cat", None]


MALFORMED = {
    "missing_key_jsonl": ("bad.jsonl", '{"unsafe_prompt": "a", "safe_prompt": "b"}\n\n{"unsafe_prompt": "c"}\n',
                          r"bad\.jsonl, line 3: missing key\(s\); expected 'original_prompt' \+ 'modified_prompt' \(S-VARE\) or 'unsafe_prompt'"),
    "broken_json": ("broken.json", '[\n  {"original_prompt": "a", "modified_prompt": "b"},\n  {"original_prompt": "c",,}\n]\n',
                    r"broken\.json, line 3: not valid JSON: .*\(column 27\)"),
    "broken_jsonl": ("broken.jsonl", '{"original_prompt": "a", "modified_prompt": "b"}\n{"original_prompt": \n',
                     r"broken\.jsonl, line 2: not valid JSON"),
    "empty_prompt_json": ("pairs.json", '[\n  {"original_prompt": "a", "modified_prompt": "b"},\n  {"original_prompt": "c", "modified_prompt": "  "}\n]',
                          r"pairs\.json, entry 1, line 3: 'modified_prompt' is empty"),
    "csv_missing_column": ("pairs.csv", "\noriginal_prompt,safe_prompt\na,b\n", r"pairs\.csv, line 2: the CSV header has columns .*; expected"),
    "csv_short_row": ("pairs.csv", 'original_prompt,modified_prompt\na,b\n"multi\nline",c\nd\n', r"pairs\.csv, line 5: no value for 'modified_prompt'"),
    "non_string": ("pairs.jsonl", '{"original_prompt": 3, "modified_prompt": "b"}\n', r"line 1: 'original_prompt' must be a string, got int"),
    "not_a_list": ("pairs.json", '\n{"original_prompt": "a"}', r"pairs\.json, line 2: expected a JSON list of objects, got dict"),
    "bad_utf8": ("pairs.jsonl", b'{"original_prompt": "a", "modified_prompt": "b"}\n\xff\n', r"pairs\.jsonl, line 2: not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_error_names_file_line_and_problem(tmp_path: Path, case: str) -> None:
    name, content, pattern = MALFORMED[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=pattern):
        load_pairs(path)


@pytest.mark.parametrize(
    "name, content",
    [("e.json", ""), ("e.jsonl", ""), ("e.csv", ""), ("e.json", " \r\n\n"), ("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "unsafe_prompt,safe_prompt\n")],
)
def test_empty_file_says_no_pairs(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=f"no pairs in .*{name}"):
        load_pairs(path)


def test_unknown_extension_and_missing_file_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown prompt-pair file extension '\.txt'; use one of \.json, \.jsonl, \.csv"):
        load_pairs(tmp_path / "pairs.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("keys", ["svare", "ear"])
@pytest.mark.parametrize("name", ["pairs.json", "pairs.jsonl", "pairs.csv", "pairs"])
def test_save_then_load_round_trips(tmp_path: Path, name: str, keys: str) -> None:
    pairs = PAIRS + [PromptPair("line one\nline two, ünïcödé", "x\r\ny", concept="cat")]
    written = save_pairs(pairs, tmp_path / name, keys=keys)  # type: ignore[arg-type]
    assert written.suffix in (".json", ".jsonl", ".csv")
    assert load_pairs(written) == pairs


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_large_files_load_in_linear_time(tmp_path: Path, suffix: str) -> None:
    pairs = [PromptPair(f"a photo of cat number {i}", f"a photo of dog number {i}") for i in range(40_000)]
    path = save_pairs(pairs, tmp_path / f"pairs{suffix}")
    started = time.perf_counter()
    assert load_pairs(path) == pairs
    assert time.perf_counter() - started < 5  # was 27 s for JSON: each entry's line was counted from the file's start


def test_an_error_deep_in_a_large_json_file_names_its_line(tmp_path: Path) -> None:
    records = [{"original_prompt": f"cat {i}", "modified_prompt": f"dog {i}"} for i in range(5000)]
    records[4321] = {"original_prompt": "cat"}
    path = write_records(tmp_path / "pairs.json", records)
    with pytest.raises(DataError, match=f"entry 4321, line {2 + 4321 * 4}:"):
        load_pairs(path)


def test_pairs_given_in_python_become_prompt_pairs() -> None:
    assert PromptPair.of(("a cat", " a dog ")) == PromptPair("a cat", "a dog")
    assert PromptPair.of(["a", "b", "cats"]) == PromptPair("a", "b", "cats")
    assert PromptPair.of({"unsafe_prompt": "a", "safe_prompt": "b"}) == PromptPair("a", "b")
    for bad in [("a",), ("a", ""), ("a", 1), "ab", 3, ("a", "b", "c", "d")]:
        with pytest.raises(DataError):
            PromptPair.of(bad)


# --- fuzzing: any file content loads or raises DataError, never anything else -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
key_names = st.sampled_from(["original_prompt", "modified_prompt", "unsafe_prompt", "safe_prompt", "concept", "other"])
entries = st.dictionaries(key_names, st.text(max_size=15) | json_values, max_size=5) | json_values


@st.composite
def file_contents(draw: st.DrawFn) -> bytes:
    """Raw bytes, arbitrary text, or near-valid JSON / JSONL / CSV built from pair-like entries."""
    kind = draw(st.sampled_from(["bytes", "text", "json", "jsonl", "csv"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
    elif kind == "text":
        data = draw(st.text(max_size=200)).encode("utf-8")
    elif kind == "json":
        data = json.dumps(draw(st.lists(entries, max_size=4)) if draw(st.booleans()) else draw(json_values)).encode()
    elif kind == "jsonl":
        data = "\n".join(json.dumps(e) for e in draw(st.lists(entries, max_size=4))).encode()
    else:
        header = draw(st.lists(key_names, max_size=4))
        rows = draw(st.lists(st.lists(st.text(max_size=10), max_size=5), max_size=4))
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        data = buffer.getvalue().encode("utf-8")
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=3)) + data[cut:]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=file_contents(), suffix=st.sampled_from([".json", ".jsonl", ".csv"]))
def test_any_file_content_loads_or_raises_data_error(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"pairs{suffix}"
    path.write_bytes(data)
    try:
        pairs = load_pairs(path)
    except DataError as error:
        assert str(path) in str(error)
    else:
        assert pairs and all(isinstance(p, PromptPair) and p.target and p.anchor for p in pairs)
