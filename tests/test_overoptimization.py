"""Gao et al.'s fitted forms by hand; `rlhf eval overoptimization` runs in test_pipeline.py on the tiny run."""

import math

import numpy as np
import pytest

from rlhf.eval.overoptimization import best_of_n_peak, fit_best_of_n, fit_rl, fits, rl_peak


def test_the_rl_form_is_recovered_and_peaks_at_exp_alpha_over_beta_minus_one():
    d = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    gain = d * (1.5 - 0.5 * np.log(np.where(d > 0, d, 1)))  # d = 0 gives 0: left out of the fit
    alpha, beta = fit_rl(d, gain)
    assert (alpha, beta) == (pytest.approx(1.5), pytest.approx(0.5))
    peak = rl_peak(alpha, beta)
    assert peak == pytest.approx(math.e ** 2)  # exp(1.5/0.5 − 1)
    # the derivative α − β(log d + 1) vanishes there
    assert alpha - beta * (math.log(peak) + 1) == pytest.approx(0, abs=1e-9)
    assert rl_peak(1.0, -0.1) is None  # still rising: no peak


def test_the_best_of_n_form_is_recovered_and_peaks_at_alpha_over_two_beta():
    d = np.sqrt([math.log(n) - (n - 1) / n for n in (1, 2, 4, 8, 16)])
    gain = d * (2.0 - 0.25 * d)
    alpha, beta = fit_best_of_n(d, gain)
    assert (alpha, beta) == (pytest.approx(2.0), pytest.approx(0.25))
    assert best_of_n_peak(alpha, beta) == pytest.approx(4.0)
    assert best_of_n_peak(2.0, 0.0) is None
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_best_of_n(np.array([0.0, 1.0]), np.array([0.0, 1.0]))


def test_fits_use_the_gain_over_sft_and_name_the_best_measured_point():
    points = [{"method": "sft", "label": "sft", "d": 0.0, "kl": 0.0, "gold": 0.3}]
    for d in (0.5, 1.0, 2.0, 4.0):
        gold = 0.3 + d * (1 - 0.5 * math.log(d))
        points.append({"method": "ppo", "label": f"d={d}", "d": d, "kl": d * d, "gold": gold})
    for n in (1, 2, 4):
        d = math.sqrt(math.log(n) - (n - 1) / n)
        points.append({"method": "best-of-n", "label": f"best-of-{n}", "d": d, "kl": d * d, "gold": 0.3 + d * (1 - d)})
    fitted = fits(points)
    assert fitted["rl"]["alpha"] == pytest.approx(1.0) and fitted["rl"]["beta"] == pytest.approx(0.5)
    assert fitted["rl"]["peak_kl"] == pytest.approx(math.exp(2 * (1 / 0.5 - 1)))
    assert fitted["rl"]["best_measured"]["label"] == "d=2.0"
    assert fitted["best_of_n"]["alpha"] == pytest.approx(1.0) and fitted["best_of_n"]["beta"] == pytest.approx(1.0)
    assert fitted["best_of_n"]["peak_d"] == pytest.approx(0.5)


def test_a_folder_that_is_not_a_finished_run_is_one_line_and_exit_2(tmp_path, capsys):
    from rlhf.cli import main
    from rlhf.pipeline import prepare_run_dir

    assert main(["eval", "overoptimization", str(tmp_path / "nothing")]) == 2
    assert "not an rlhf run folder" in capsys.readouterr().err
    prepare_run_dir(tmp_path / "run")  # a run folder of ours, but no stage has finished
    assert main(["eval", "overoptimization", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sft: not a finished stage; run the pipeline first" in err
    assert not (tmp_path / "run" / "gold-reward").exists()
