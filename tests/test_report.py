"""The search's report (`search.report`): ranks, selection sentence, why-not notes, benchmark
columns, interrupted status, and injection from hostile loss programs.

Stores are built by hand (no search runs): a config, the target information, candidates with
their aggregated fitness and metrics, and the evaluations the plot reads."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from evounlearn.cli.main import main
from evounlearn.config import to_dict
from evounlearn.reports.safe_text import clean_text, code_fence, md_text
from evounlearn.sandbox.program import checked_program
from evounlearn.search.config import load_search_config
from evounlearn.search.report import collect, write_outputs
from evounlearn.search.report_text import format_report
from evounlearn.search.store import Store

from .fakes import BENCHMARK, RETAIN, TARGET

SIG = "def loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget=None, ref_log_probs_retain=None):\n"
LOSS = SIG + '    """epochs: 3"""\n    return log_probs_forget.mean() - log_probs_retain.mean()\n'
HOSTILE_DOC = ('epochs: 3\n    ``` \n    <img src=x onerror=alert(1)> [link](http://x) ![im](http://y/i.png)\n'
               '    \x1b[31mred\x1b[0m \x1b]0;title\x07 \x9b2J <script>x</script>\n    ')
HOSTILE = SIG + f'    """{HOSTILE_DOC}"""\n    return log_probs_forget.mean()\n'
TOP_LEVEL = 'import os\nos.system("x")\n' + LOSS + 'print("after")\n'


def _metrics(mu: float, fit: float, fq: float = 0.05) -> dict[str, float]:
    return {"model_utility": mu, "forget_rouge": 0.1, "forget_prob": 0.05, "forget_quality": fq, "fitness_fake": fit}


def make_store(d: Path, *, status: str = "done", benchmark: str = BENCHMARK, select_on: str = "search",
               target: dict[str, Any] | None = None, fitness: str = "") -> Store:
    d.mkdir(parents=True, exist_ok=True)
    st = Store(d / "search.sqlite")
    cfg = load_search_config(None, {"benchmark": benchmark, "report_seeds": 3, "finalists": 3, "baselines": ["npo"],
                                    "select_on": select_on, "fitness": fitness})
    st.set_meta("config", to_dict(cfg))
    st.set_meta("status", status)
    st.set_meta("target", target or {
        "data": "fake", "paths": {}, "parts": {}, "target_utility": 0.8,
        "target": {p: {"summary": {**TARGET, "fitness_fake": 0.4}, "fitness": 0.4} for p in ("search", "report")},
        "retain": {p: {"summary": {**RETAIN, "fitness_fake": 0.84}, "fitness": 0.84} for p in ("search", "report")}})
    return st


def add(st: Store, *, fs: float, n_search: int = 1, fr: float | None = None, n_report: int = 0, sd_s: float = 0.01,
        sd_r: float = 0.01, mu: float = 0.85, code: str = LOSS, first_seed: float | None = None, gen: int = 0,
        operator: str = "seed", kind: str = "candidate", label: str | None = None, notes: str = "") -> int:
    """A finished candidate (or baseline) with its aggregates and its search-part runs."""
    cid = st.add_candidate(
        kind=kind, label=label, method=label, generation=gen, operator=operator, code=code, function="loss_fn",
        interface="faithful", status="done", stage=2, epochs=3, notes=notes, fitness_search=fs,
        fitness_search_std=sd_s if n_search > 1 else None, utility_search=mu, score_search=fs, n_search=n_search,
        fitness_report=fr, fitness_report_std=sd_r if n_report > 1 else None,
        utility_report=mu if n_report else None, n_report=n_report, metrics=_metrics(mu, fs),
        report_metrics=_metrics(mu, fr) if n_report else None)
    for seed in range(n_search):
        fit = first_seed if seed == 0 and first_seed is not None else fs
        eid = st.add_evaluation(cid, "search", seed, epochs=3)
        st.update_evaluation(eid, status="done", fitness=fit, stage=2, metrics=_metrics(mu, fit))
    return cid


def standard_run(d: Path, **kw: Any) -> tuple[Store, dict[str, int]]:
    """Three finalists (3 seeds), the winner chosen on the search part while #b beats it on the
    report part with a smaller sd; one-seed candidates, one better than every finalist mean."""
    st = make_store(d, **kw)
    ids = {
        "w": add(st, fs=0.90, n_search=3, fr=0.85, n_report=3, sd_r=0.03, first_seed=0.93),
        "b": add(st, fs=0.88, n_search=3, fr=0.87, n_report=3, sd_r=0.005, gen=1, operator="refine"),
        "c": add(st, fs=0.86, n_search=3, fr=0.80, n_report=3, gen=1, operator="crossover"),
        "one_high": add(st, fs=0.92, gen=2, operator="mutation"),
        "one_low": add(st, fs=0.70, gen=2, operator="mutation"),
        "one_mid": add(st, fs=0.80, gen=1, operator="refine"),
        "npo": add(st, fs=0.83, n_search=3, fr=0.82, n_report=3, kind="baseline", label="npo"),
    }
    st.set_meta("finalists", [ids["c"], ids["w"], ids["b"]])
    st.set_meta("winner", ids["w"])
    return st, ids


def fences_ok(md: str) -> list[str]:
    """The lines outside code fences (CommonMark: a fence closes only with a run of the same
    character at least as long); asserts every opened fence is closed."""
    outside, fence = [], ""
    for line in md.splitlines():
        m = re.match(r"^ {0,3}(`{3,})\s*(\S*)\s*$", line) if not fence else re.match(r"^ {0,3}(`{3,})\s*$", line)
        if not fence and m:
            fence = m.group(1)
        elif fence and m and len(m.group(1)) >= len(fence):
            fence = ""
        elif not fence:
            outside.append(line)
    assert not fence, "a code fence is left open"
    return outside


def table_lines(md: str, title: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### ") and title in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("### "):
            break
        if line.startswith("| ") and not line.startswith("| rank") and not line.startswith("| name"):
            rows.append(line)
    return rows


# ------------------------------------------------------------------------------------------------


def test_ranks_are_sorted_and_only_among_rows_with_the_same_seeds(tmp_path: Path) -> None:
    st, ids = standard_run(tmp_path / "run")
    data = collect(st)
    for t in data["tables"]:
        ranks = [r["rank"] for r in t["rows"]]
        if t["section"] != "reference":
            assert ranks == list(range(1, len(ranks) + 1)), (t["title"], ranks)
    by_section = {t["section"]: t for t in data["tables"]}
    # finalists: ranked by their 3-seed report mean (b 0.87 > w 0.85 > c 0.80), the winner marked
    assert [r["name"] for r in by_section["finalist"]["rows"]] == [f"#{ids['b']}", f"#{ids['w']} (winner)",
                                                                  f"#{ids['c']}"]
    # the one-seed candidate above every finalist's mean is ranked among the one-seed rows only
    assert [r["name"] for r in by_section["candidate"]["rows"]] == [f"#{ids['one_high']}", f"#{ids['one_mid']}",
                                                                   f"#{ids['one_low']}"]
    assert [r["name"] for r in by_section["baseline"]["rows"]] == ["npo"]
    fin_headers = by_section["finalist"]["headers"]
    assert fin_headers["search"] == "search fitness, mean ± sd over 3 seeds"
    assert fin_headers["report"] == "report fitness, mean ± sd over 3 seeds"
    assert by_section["candidate"]["headers"]["search"] == "search fitness (1 seed)"
    assert "report" not in by_section["candidate"]["columns"]  # no one-seed row has a report run
    md = format_report(data, markdown=True)
    for title in ("Finalists", "Other candidates"):
        shown = [int(line.split("|")[1]) for line in table_lines(md, title)]
        assert shown == sorted(shown) and shown[0] == 1
    for label in ("forget quality", "model utility", "training epochs"):
        assert label in md
    assert "seeds s/r" not in md and "stopped at stage 1: 0" not in md


def test_a_finalist_with_fewer_seeds_gets_its_own_table(tmp_path: Path) -> None:
    st, ids = standard_run(tmp_path / "run")
    short = add(st, fs=0.95, n_search=1, fr=0.95, n_report=1, gen=3)
    st.set_meta("finalists", [ids["w"], ids["b"], ids["c"], short])
    tables = [t for t in collect(st)["tables"] if t["section"] == "finalist"]
    assert [len(t["rows"]) for t in tables] == [3, 1]
    assert tables[1]["rows"][0]["rank"] == 1 and "report part: 1 seed" in tables[1]["title"]


def test_selection_sentence_and_why_not_note(tmp_path: Path) -> None:
    st, ids = standard_run(tmp_path / "run")
    data = collect(st)
    md = format_report(data, markdown=True)
    sentence = ("The winner is the finalist with the best mean search-part fitness over 3 seeds (a finalist below "
                "the utility floor ranks last); the report part is never used to select.")
    assert data["selection"] == sentence
    assert md.index(md_text(sentence)) < md.index("### Finalists")
    # b: report 0.87 ± 0.005 beats the winner's 0.85 ± 0.03: the note says why it did not win
    assert len(data["why_not"]) == 1
    note = data["why_not"][0]
    assert note.startswith(f"#{ids['b']} has a higher report fitness than the winner #{ids['w']} (0.8700 vs 0.8500)")
    assert "its mean search-part fitness is lower (0.8800 vs 0.9000)" in note and "search part only" in note
    assert md.index(md_text(note)) < md.index("### Finalists")
    text = " ".join(format_report(data).split())  # the terminal wraps prose at 120 columns
    assert sentence in text and note in text
    # select_on: report names the report part in the sentence
    st2, _ = standard_run(tmp_path / "run2", select_on="report")
    assert "best mean report-part fitness over 3 seeds" in collect(st2)["selection"]


def test_plot_points_use_the_first_seed_and_the_winner_is_on_that_curve(tmp_path: Path) -> None:
    st, ids = standard_run(tmp_path / "run")
    data = collect(st)
    pts = {p["id"]: p for p in data["points"]}
    assert pts[ids["w"]]["fitness"] == 0.93  # its first search-part run, not its 3-seed mean 0.90
    assert pts[ids["b"]]["fitness"] == 0.88
    best = max(p["fitness"] for p in data["points"] if p["passes_floor"])
    assert pts[ids["w"]]["fitness"] <= best
    write_outputs(tmp_path / "run", st)
    assert (tmp_path / "run" / "fitness.png").read_bytes()[:4] == b"\x89PNG"


def test_hostile_docstrings_and_names_cannot_escape_the_markdown(tmp_path: Path, capsys) -> None:
    d = tmp_path / "run"
    st, ids = standard_run(d)
    st.update_candidate(ids["w"], code=HOSTILE, operator="<b>op</b> [click](http://evil) \x1b[2J",
                        notes="<img src=n> [n](http://n)")
    st.update_candidate(ids["one_high"], operator="| broken | cell ``` <img src=z>")
    data = write_outputs(d, st)
    assert data["winner"]["code"] and "```" in data["winner"]["code"]
    md = (d / "leaderboard.md").read_text()
    raw = (d / "leaderboard.md").read_bytes()
    assert b"\x1b" not in raw and "\x9b" not in md and "\x07" not in md
    outside = "\n".join(fences_ok(md))
    assert "lineage of the winner:" in outside  # the code's ``` did not close the fence
    for bad in ("<img", "<b>", "<script"):
        assert bad not in outside, bad
    assert not re.search(r"(?<!\\)\]\(http", outside)  # no live link or image: its bracket is escaped
    # every table row still has the table's number of cells
    for title in ("Finalists", "Other candidates"):
        for line in table_lines(md, title):
            assert len(re.findall(r"(?<!\\)\|", line)) == len(re.findall(r"(?<!\\)\|", table_lines(md, title)[0]))
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out
    assert "\x1b" not in (d / "leaderboard.json").read_text() and "\\u001b" not in (d / "leaderboard.json").read_text()
    assert "\x1b" not in (d / "best_loss.py").read_text()


def test_best_loss_holds_only_the_checked_regenerated_functions(tmp_path: Path) -> None:
    d = tmp_path / "run"
    st, ids = standard_run(d)
    st.update_candidate(ids["w"], code=TOP_LEVEL, program=None)
    write_outputs(d, st)
    text = (d / "best_loss.py").read_text()
    assert "import os" not in text and "os.system" not in text and "after" not in text
    body = ast.parse(text).body
    assert [type(n).__name__ for n in body] == ["FunctionDef"] and body[0].name == "loss_fn"
    assert text.startswith("# ") and ast.get_docstring(body[0]) == "epochs: 3"
    # the leaderboard shows the same checked code
    md = (d / "leaderboard.md").read_text()
    assert "os.system" not in md
    # a helper the candidate needs is kept; an unused function and top-level code are not
    prog = ("import os\nX = os.getcwd()\n\ndef helper(x):\n    return x.mean()\n\ndef unused(x):\n    return x\n\n"
            + SIG + "    return helper(log_probs_forget)\n")
    out = checked_program(prog, "faithful", "loss_fn")
    assert out is not None and [n.name for n in ast.parse(out).body] == ["helper", "loss_fn"]
    assert checked_program("import os\nos.system('x')\n") is None  # no candidate: nothing to write


def test_muse_like_summaries_show_their_own_formula_and_columns(tmp_path: Path) -> None:
    summary = {"verbmem_f": 0.1, "knowmem_f": 0.2, "knowmem_r": 0.5, "privleak": -3.0, "privleak_auc": 0.52,
               "fitness_evomu": 0.71, "fitness_calibrated": None}
    st = make_store(tmp_path / "run", benchmark="muse-news", fitness="evomu", target={
        "data": "news", "paths": {}, "parts": {}, "target_utility": 0.55,
        "target": {p: {"summary": {**summary, "verbmem_f": 0.9}, "fitness": 0.4} for p in ("search", "report")},
        "retain": None})
    for fs in (0.7, 0.6):
        cid = add(st, fs=fs, n_search=2, fr=fs, n_report=2)
        st.update_candidate(cid, metrics=summary, report_metrics=summary, utility_search=0.5, utility_report=0.5)
    st.set_meta("finalists", [1, 2])
    st.set_meta("winner", 1)
    data = write_outputs(tmp_path / "run", st)
    md = (tmp_path / "run" / "leaderboard.md").read_text()
    text = format_report(data)
    for out in (md, text):
        assert "forget10" not in out and "nan" not in out.lower()
        assert "MU" not in out.split("\n") and "forget ROUGE" not in out
        assert "VerbMem" in out and "KnowMem" in out and "PrivLeak" in out  # the benchmark's own formula
    fin = next(t for t in data["tables"] if t["section"] == "finalist")
    assert {"verbmem_f", "knowmem_f", "knowmem_r", "privleak", "fitness_evomu"} <= set(fin["columns"])
    assert "forget_quality" not in fin["columns"] and "fitness_calibrated" not in fin["columns"]
    assert "model_utility" not in fin["columns"]
    for row in fin["rows"]:
        assert all(row.get(c) is not None for c in fin["columns"] if c not in ("generation",))
    assert "VerbMem_f" in text and "search fitness: evomu = 0.5 * mean(1 - VerbMem_f" in text
    assert "calibrated" in data["fitness"]["names"] and data["fitness"]["utility_key"] == "knowmem_r"


def test_interrupted_status_when_no_driver_holds_the_search(tmp_path: Path, capsys) -> None:
    st, _ = standard_run(tmp_path / "run", status="running")
    assert collect(st)["status"] == "interrupted"
    st.set_meta("pid", os.getppid())  # a live driver process recorded by the driver
    assert collect(st)["status"] == "running"
    st.set_meta("status", "interrupted")
    assert collect(st)["status"] == "interrupted"
    st.set_meta("status", "done")
    assert collect(st)["status"] == "done"
    st.set_meta("status", "running")
    st.set_meta("pid", None)
    st.close()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "status interrupted" in capsys.readouterr().out


def test_safe_text_helpers() -> None:
    assert clean_text("a\x1b[31mb\x1b[0m\x07c\x9b2Jd\x1b]0;t\x07e\r\nf\x00") == "abcde\nf"
    block = code_fence('x = """````"""\n')
    assert block.startswith("`````\n") and block.endswith("\n`````")
    assert md_text("<a href=x>[l](http://x)|") == r"&lt;a href=x&gt;\[l\](http://x)\|"


# ------------------------------------------------------------------------------------------------
# the terminal leaderboard fits 120 columns; rank, floor verdict and fitness first; noise


def _table_lines(text: str) -> list[list[str]]:
    """The terminal tables: [header, separator, rows...] per table (lines after a blank line that
    start with `rank` or `fitness`)."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(("rank ", "fitness ")) and i + 1 < len(lines) and lines[i + 1].startswith("----"):
            block = [line]
            for nxt in lines[i + 1:]:
                if not nxt.strip() or nxt.startswith("("):
                    break
                block.append(nxt)
            out.append(block)
    return out


def test_the_terminal_leaderboard_fits_120_columns_and_leads_with_rank_floor_fitness(tmp_path: Path) -> None:
    from evounlearn.search.report_text import TERMINAL_WIDTH, sig

    st, ids = standard_run(tmp_path / "run")
    st.set_meta("seconds", 400.7713)
    data = collect(st)
    text = format_report(data)
    code_start = text.index("def loss_fn")  # the winner's code is shown as it is
    assert all(len(line) <= TERMINAL_WIDTH for line in text[:code_start].splitlines())
    tables = _table_lines(text)
    assert len(tables) == 4
    for block in tables[:3]:  # finalists, baselines, other candidates
        assert block[0].split()[:3] == ["rank", "floor", "fitness"], block[0]
        assert block[2].split()[1] in ("pass", "BELOW")
    assert "time: 400.8 s" in text
    assert sig(0.77691234) == "0.7769" and sig(1.234e-06) == "1.234e-06" and sig(None) == "-"
    # the Markdown keeps every column
    md = format_report(data, markdown=True)
    for label in ("forget ROUGE, report part", "forget probability, report part", "training epochs"):
        assert label in md


def test_a_winner_within_the_noise_of_a_baseline_is_said_so(tmp_path: Path) -> None:
    from evounlearn.search.report_text import noise_lines

    st, ids = standard_run(tmp_path / "run")  # winner 0.85 ± 0.03 vs npo 0.82 ± 0.01, 3 seeds each
    data = collect(st)
    lines = noise_lines(data)
    assert len(lines) == 1 and "within the noise" in lines[0] and "npo (0.82" in lines[0]
    assert "SE 0.018" in lines[0]  # sqrt(0.03^2/3 + 0.01^2/3)
    assert lines[0] in format_report(data).replace("\n", " ") or "within the noise" in format_report(data)
    # far apart: nothing said; one run each: no standard error, and the line says so
    data["baselines"]["npo"].update(fitness_report_mean=0.5)
    assert noise_lines(data) == []
    data["baselines"]["npo"].update(fitness_report_mean=0.84, seeds=1, fitness_report_std=None)
    assert "no standard error" in noise_lines(data)[0]


def test_best_loss_says_how_to_use_it_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "run"
    st, _ = standard_run(d)
    monkeypatch.chdir(tmp_path)
    write_outputs("run", st)  # a relative run directory
    text = (d / "best_loss.py").read_text()
    use = next(line for line in text.splitlines() if "evounlearn unlearn" in line)
    assert f"--loss-file {d.resolve() / 'best_loss.py'}" in use and f"--config {d.resolve() / 'best_config.yaml'}" in use
    assert "search part" in text and "forget_part=report" in text


def test_a_control_run_says_so_in_its_summary(tmp_path: Path) -> None:
    from evounlearn.config import to_dict

    st = make_store(tmp_path / "run")
    cfg = load_search_config(None, {"benchmark": BENCHMARK, "control": "random"})
    st.set_meta("config", to_dict(cfg))
    assert format_report(collect(st)).startswith("search: control random,")


def test_the_comparison_statistic() -> None:
    """Difference of means with SE = sqrt(sd_a²/n_a + sd_b²/n_b): above at > 2 SE (and the minimum
    size), below at < -2 SE, within the noise between; no SE with one value on a side."""
    import math

    from evounlearn.reports.stats import difference_of_means, difference_of_values

    d = difference_of_values([0.80, 0.82, 0.84], [0.70, 0.71, 0.72])
    se = math.sqrt(0.02**2 / 3 + 0.01**2 / 3)
    assert d is not None and abs(d.delta - 0.11) < 1e-9 and abs(d.se - se) < 1e-9 and d.above and not d.below
    assert difference_of_values([0.70, 0.71, 0.72], [0.80, 0.82, 0.84]).below
    close = difference_of_means(0.80, 0.05, 3, 0.79, 0.05, 3)
    assert close.within_noise and not close.above and not close.below
    assert not difference_of_means(0.80, 0.001, 5, 0.795, 0.001, 5, min_delta=0.01).above  # too small to matter
    assert difference_of_means(0.8, None, 1, 0.7, 0.01, 3).se is None
    assert difference_of_values([float("nan")], [0.5]) is None
