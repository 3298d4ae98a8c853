"""Best-of-n: the analytic KL by hand, and `rlhf bestofn` on the tiny model: each prompt's best of
its first n samples under the reward model, scored again independently."""

import json
import math
import subprocess
import sys

import pytest

from rlhf.bestofn import best_of_n_kl
from rlhf.data.synthetic import write_synthetic_data


def test_the_kl_of_best_of_n_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.193
    assert best_of_n_kl(4) == pytest.approx(1.3862944 - 0.75, abs=1e-6)
    assert best_of_n_kl(64) == pytest.approx(4.1588831 - 63 / 64, abs=1e-6)
    with pytest.raises(ValueError, match="n ≥ 1"):
        best_of_n_kl(0)


def test_bestofn_keeps_the_best_of_each_prompts_first_n_samples(tmp_path, tiny_path):
    from rlhf.eval.run import reward_scores

    data = write_synthetic_data(tmp_path / "data", n_demos=8, n_comparisons=16, n_prompts=5)
    reward = tmp_path / "reward"
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "reward", f"model={tiny_path}",
                           f"data=[{data['comparisons']}]", "max_steps=2", "batch_size=4", "max_length=128",
                           "mixed_precision=fp32", f"output_dir={reward}"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "best.jsonl"
    command = [sys.executable, "-m", "rlhf.cli", "bestofn", "--model", tiny_path, "--reward-model", str(reward),
               "--prompts", data["prompts"], "--n", "1", "2", "4", "--max-new-tokens", "8", "--max-prompts", "3",
               "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # split at "\n" only: a sampled response may hold U+2028 or U+0085, where splitlines() cuts too
    rows = [json.loads(line) for line in output.read_text().split("\n") if line]
    assert len(rows) == 3 and all(len(row["responses"]) == len(row["scores"]) == 4 for row in rows)
    prompts = [row["prompt"] for row in rows for _ in range(4)]
    rescored = reward_scores(reward, prompts, [text for row in rows for text in row["responses"]])
    for index, row in enumerate(rows):
        assert row["scores"] == pytest.approx(rescored[4 * index:4 * index + 4], abs=1e-4)
        for n in (1, 2, 4):
            assert row["best"][str(n)]["score"] == pytest.approx(max(row["scores"][:n]), abs=1e-6)
            assert row["best"][str(n)]["response"] in row["responses"][:n]
    means = [sum(row["best"][str(n)]["score"] for row in rows) / 3 for n in (1, 2, 4)]
    assert means == sorted(means)  # more samples never pick worse
    assert f"n =  4  score {means[2]:+.3f}  KL {best_of_n_kl(4):.3f} nats" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # no --overwrite: refused
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


def test_bestofn_refuses_more_than_64_samples_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "bestofn", "--model", "tiny", "--reward-model", "x",
                           "--prompts", "p.jsonl", "--n", "4", "65", "--output", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["rlhf: error: bestofn: --n 65: at most 64 samples per prompt"]
    assert not (tmp_path / "o.jsonl").exists()
