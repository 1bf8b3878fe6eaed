"""benchmarks/harness.py: the row cache resumes, reports are written whole and say when they are partial."""

import json

import pytest

from benchmarks.harness import Cache, ints, markdown_table, parser, write_report


def test_cache_computes_a_row_once_and_reads_it_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": 0.5}

    cache = Cache(tmp_path / "c")
    assert cache.row("a__s0", compute) == {"accuracy": 0.5}
    assert Cache(tmp_path / "c").row("a__s0", compute) == {"accuracy": 0.5}  # a rerun: read back
    assert len(calls) == 1
    assert cache.rows(["a__s0", "b__s0"]) == {"a__s0": {"accuracy": 0.5}}
    with pytest.raises(ValueError, match="plain file stem"):
        cache.path("../x")


def test_report_json_and_markdown_partial_marked(tmp_path):
    j, m = write_report(tmp_path, "mine", {"rows": [1, 2]}, "# mine", partial=True)
    body = json.loads(j.read_text())
    assert body["rows"] == [1, 2] and body["partial"] is True and "cpu" in body["machine"]
    assert m.read_text().startswith("**PARTIAL") and m.read_text().endswith("# mine\n")
    write_report(tmp_path, "mine", {"rows": [1, 2, 3]}, "# mine")
    assert json.loads(j.read_text())["partial"] is False and m.read_text() == "# mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.md"]  # no temporary files left


def test_parser_has_the_common_flags():
    args = parser("doc", cache="runs/x").parse_args(["--report-only", "--device", "cpu"])
    assert args.report_only and args.device == "cpu" and args.cache.endswith("runs/x")
    assert args.data.endswith("cifar10-jpeg.tar.xz")
    assert not hasattr(parser(None).parse_args([]), "cache")


def test_cache_of_nested_folders_and_its_own_json_layout(tmp_path):
    cache = Cache(tmp_path, indent=None)
    cache.put("macs03/s0/row_amc", {"accuracy": 0.25})
    assert (tmp_path / "macs03" / "s0" / "row_amc.json").read_text() == '{"accuracy": 0.25}\n'
    assert cache.get("macs03/s0/row_amc") == {"accuracy": 0.25} and cache.get("macs03/s1/row_amc") is None
    for bad in ("", "a//b", "a/../b", ".hidden", "/abs"):
        with pytest.raises(ValueError, match="plain file stem"):
            cache.path(bad)


def test_report_kept_as_given_without_stamp(tmp_path):
    j, m = write_report(tmp_path, "old", {"rows": [1]}, None, stamp=False, indent=2, newline=False)
    assert j.read_text() == '{\n  "rows": [\n    1\n  ]\n}' and not m.exists()


def test_parser_options_and_seed_lists():
    ap = parser("doc", cache="runs/x", report_only=False, device=False, data=False, quick="smoke",
                seeds="0,1", threads=1)
    args = ap.parse_args(["--quick"])
    assert args.quick and ints(args.seeds) == [0, 1] and args.threads == 1
    assert not any(hasattr(args, a) for a in ("report_only", "device", "data"))
    assert parser("doc", device="cpu").parse_args([]).device == "cpu"
    assert ints("0, 2,") == [0, 2]
    assert markdown_table(["a", "b"], [[1, 2]]) == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]
