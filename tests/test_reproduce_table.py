"""Chapter 6's table: each setup (this run, its best-on-test epoch, the paper) on a labelled row of its own."""

from __future__ import annotations

from uflow_lib.evaluation import default_nfa_scales
from uflow_lib.reproduce import PAPER_RESULTS, _row, nfa_scales_label, results_table

METRICS = dict(method="uflow", epoch=40, backbone="mobilenetv2", pixel_auroc=0.9562, aupro=0.887, miou_auto=0.3224,
               miou_oracle=0.4983, image_auroc=0.9754, mean_z2_normal=0.957)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_this_run_and_the_paper_never_share_a_cell():
    row = _row("bottle", METRICS, None, dict(input_size=256))
    lines = results_table([row]).splitlines()
    head, mine, paper = _cells(lines[0]), _cells(lines[2]), _cells(lines[3])
    assert not any("(" in c and ")" in c and c[0].isdigit() for c in mine + paper)  # no "95.62 (98.65)"
    assert dict(zip(head, mine)) == {
        "category": "bottle", "epochs": "40", "setup": "this run: last epoch", "backbone": "mobilenetv2, 256 px",
        "NFA scales": "one: the scale nearest 16²", "pixel AUROC": "95.62", "AUPRO": "88.70", "mIoU auto": "0.3224",
        "mIoU oracle": "0.4983", "image AUROC": "97.54", "mean z² normal": "0.957"}
    p = dict(zip(head, paper))
    assert p["setup"].startswith("U-Flow paper: best on test") and p["backbone"] == "MS-CaiT, 448 px"
    assert p["epochs"] == "≤ 200" and p["NFA scales"] == "all (28², 14²)"
    assert [p[k] for k in ("pixel AUROC", "AUPRO", "mIoU auto", "mIoU oracle")] == [
        f"{PAPER_RESULTS['bottle'][0]:.2f}", f"{PAPER_RESULTS['bottle'][1]:.2f}", "0.6564", "0.6617"]
    assert p["image AUROC"] == p["mean z² normal"] == "—"  # the paper's table has neither


def test_best_on_test_is_its_own_row_and_means_keep_setups_apart():
    best = dict(epoch=12, pixel_auroc=0.97, aupro=0.9, image_auroc=0.99)
    rows = [_row("bottle", METRICS, best, dict(input_size=256)), _row("carpet", dict(METRICS, pixel_auroc=0.9), None)]
    lines = results_table(rows).splitlines()
    setups = [_cells(line)[2] for line in lines[2:7]]
    assert setups == ["this run: last epoch", "this run: best on test (selected on test)",
                      next(s for s in setups if s.startswith("U-Flow paper")), "this run: last epoch", setups[4]]
    b = dict(zip(_cells(lines[0]), _cells(lines[3])))
    assert b["epochs"] == "12" and b["pixel AUROC"] == "97.00" and b["NFA scales"] == "— (no NFA)"
    assert b["mIoU auto"] == b["mean z² normal"] == "—"  # not measured at best-on-test evaluations
    mean_mine, mean_paper = _cells(lines[7]), _cells(lines[8])
    assert mean_mine[0] == "**mean**" and mean_mine[2] == "this run: last epoch" and mean_mine[5] == "92.81"
    assert mean_mine[3] == "mixed"  # bottle's input size is known, carpet's is not: not one setup
    assert mean_paper[0] == "**mean**" and mean_paper[2].startswith("U-Flow paper")
    assert mean_paper[5] == f"{(PAPER_RESULTS['bottle'][0] + PAPER_RESULTS['carpet'][0]) / 2:.2f}"


def test_nfa_label_follows_the_librarys_rule():
    assert default_nfa_scales("mcait", 2, [28, 14]) is None and nfa_scales_label("mcait") == "all (28², 14²)"
    assert default_nfa_scales("mobilenetv2", 2, [32, 16]) == [1] and "nearest 16²" in nfa_scales_label("mobilenetv2")
    baseline = _row("bottle", {k: v for k, v in METRICS.items() if not k.startswith("miou")} | dict(method="padim"),
                    None)
    assert baseline["nfa_scales"] is None and "paper_pixel_auroc" not in baseline  # no NFA, not the U-Flow paper
