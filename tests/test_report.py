"""The HTML report: tables, figures, escaping, the JSON twin, atomic writes, and the layout check in chromium."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from noduleclip.errors import InputError  # noqa: E402
from noduleclip.report import Figure, Section, Table, Text, format_cell, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def png(path: Path, width_in: float = 4.0) -> Path:
    fig, ax = plt.subplots(figsize=(width_in, 2.5))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def test_cells_format_floats_to_three_decimals_and_missing_as_a_dash():
    assert format_cell(0.12345) == ("0.123", True)
    assert format_cell(np.float32(0.5)) == ("0.500", True)
    assert format_cell(None)[0] == format_cell(float("nan"))[0] == "\u2013"
    assert format_cell(np.int64(7)) == ("7", True)
    assert format_cell(True) == ("yes", False)
    assert format_cell("a <b>") == ("a <b>", False)
    assert format_cell("5.7e-07") == ("5.7e-07", True) and format_cell("0.22\u20130.83") == ("0.22\u20130.83", False)


def test_report_holds_tables_figures_text_and_the_data(tmp_path):
    image = png(tmp_path / "curve.png")
    sections = [
        Section("Malignancy <nodules>", [
            Text("AUROC & AUPRC of <the> ensemble."),
            Table(["set", "AUROC", "p"], [["ours", 0.91234, 0.01], ["other", None, 0.5]], caption="Table 2",
                  bold={(0, 2)}),
            Figure(image, "ROC curve"),
        ]),
        Section("Malignancy <nodules>", [Text("second section with the same title")]),
    ]
    data = {"auroc": np.float64(0.91234), "nan": float("nan"), "array": np.arange(3)}
    html_path, json_path = write_report(tmp_path / "out" / "report.html", "External <evaluation>", sections, data,
                                        subtitle="run a on b")
    assert json_path == tmp_path / "out" / "report.json"
    assert json.loads(json_path.read_text()) == {"auroc": 0.91234, "nan": None, "array": [0, 1, 2]}
    page = html_path.read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained, no JS
    assert "External &lt;evaluation&gt;" in page and "AUROC &amp; AUPRC of &lt;the&gt; ensemble." in page
    assert '<td class="num">0.912</td>' in page and '<td class="num mark">0.010</td>' in page
    assert '<td class="num">0.500</td>' in page and '<td class="num">\u2013</td>' in page  # a dash, right-aligned
    assert '<th scope="col" class="num">AUROC</th>' in page and '<th scope="col">set</th>' in page
    assert '<td class="short">ours</td>' in page  # short text does not wrap
    assert "<caption>Table 2</caption>" in page and "<figcaption>ROC curve</figcaption>" in page
    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    assert uri in page
    assert 'id="malignancy-nodules"' in page and 'id="malignancy-nodules-2"' in page  # unique anchors
    assert not [p for p in html_path.parent.iterdir() if p.name.startswith(".")]


def test_a_bad_block_writes_nothing(tmp_path):
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match="does not exist"):
        write_report(out, "t", [Section("s", [Figure(tmp_path / "missing.png")])], {})
    not_png = tmp_path / "x.png"
    not_png.write_text("not an image")
    with pytest.raises(InputError, match="not a PNG"):
        write_report(out, "t", [Section("s", [Figure(not_png)])], {})
    with pytest.raises(InputError, match="row 0 has 1 cells but there are 2 columns"):
        write_report(out, "t", [Section("s", [Table(["a", "b"], [[1]])])], {})
    with pytest.raises(InputError, match="cannot be written as JSON"):
        write_report(out, "t", [], {"path": object()})
    assert list(tmp_path.iterdir()) == [not_png]


def test_rewriting_a_report_replaces_both_files(tmp_path):
    write_report(tmp_path / "r.html", "first", [Section("s", [Text("one")])], {"v": 1})
    write_report(tmp_path / "r.html", "second", [Section("s", [Text("two")])], {"v": 2})
    assert "two" in (tmp_path / "r.html").read_text() and json.loads((tmp_path / "r.json").read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"]


def wide_report(tmp_path: Path) -> Path:
    """A report with a very wide table, a very wide figure, long unbroken text and several figures in a row."""
    wide = png(tmp_path / "wide.png", width_in=30)
    small = png(tmp_path / "small.png")
    columns = [f"column number {i} with a long name" for i in range(25)]
    rows = [[float(i * j) / 7 for j in range(25)] for i in range(6)]
    sections = [Section("Wide things", [Text("x" * 400), Table(columns, rows, caption="a wide table"),
                                        Figure(wide, "a 3000 px figure"), Figure(small, "small"),
                                        Table(["a"], [[1]]), Figure(small, "small again")])]
    return write_report(tmp_path / "report.html", "layout", sections, {})[0]


chromium = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium is None, reason="chromium is not installed (apt-get install chromium)")
def test_layout_check_in_headless_chromium(tmp_path):
    report = wide_report(tmp_path)
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report.py"), str(report),
                           "--screenshot", str(shot), "--widths", "1280", "420"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert shot.read_bytes().startswith(b"\x89PNG")
    # a page that overflows and overlaps is caught: a block wider than the window, figures pulled onto each other
    broken = tmp_path / "broken.html"
    page = report.read_text().replace("<main>", '<main><div style="width:3000px">wide</div>', 1)
    broken.write_text(page.replace("figure { margin: 1.2rem 0;", "figure { margin: -30rem 0 0 0;", 1))
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report.py"), str(broken), "--widths", "1280"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "wider than the window" in done.stdout and "overlap" in done.stdout
