"""DPO: the loss by hand, the sequence log-probs against a plain forward, the response mask, and
`rlhf dpo` on the tiny model (log 2 at the first step, then falling; a plain HF folder)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.data.collate import RankedExample, collate_ranked
from rlhf.data.synthetic import write_synthetic_data
from rlhf.losses import dpo_loss


def test_dpo_loss_and_gradient_by_hand_for_one_pair():
    policy = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, -1.5]])
    ranks, valid = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool)
    loss, accuracy = dpo_loss(policy, reference, ranks, valid, beta=0.5)
    # margin = 0.5·((−1 + 1.5) − (−2 + 1.5)) = 0.5; loss = −log σ(0.5) = log(1 + e^−0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-7)
    assert accuracy.item() == 1.0
    loss.backward()
    # ∂/∂π_w = −β·σ(−margin), ∂/∂π_l = +β·σ(−margin)
    slope = 0.5 / (1 + math.exp(0.5))
    assert policy.grad.tolist()[0] == pytest.approx([-slope, slope], abs=1e-7)


def test_dpo_loss_over_a_three_way_ranking_with_a_tie_and_padding():
    """Ranks 1, 2, 2 give two pairs (the tie none); a second prompt has K = 2 and a padded slot."""
    policy = torch.tensor([[0.0, -1.0, -3.0], [-2.0, -1.0, 9.0]])
    reference = torch.zeros(2, 3)
    ranks = torch.tensor([[1, 2, 2], [2, 1, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss, accuracy = dpo_loss(policy, reference, ranks, valid, beta=1.0)

    def pair(margin):
        return math.log(1 + math.exp(-margin))
    first = (pair(0.0 - -1.0) + pair(0.0 - -3.0)) / 2  # y0 over y1, y0 over y2
    second = pair(-1.0 - -2.0)  # y1 over y0
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)
    assert accuracy.item() == 1.0


def test_the_response_mask_marks_exactly_each_responses_tokens():
    examples = [RankedExample([[5, 6, 7, 8], [5, 6, 9]], [1, 2], [2, 2], [-1.0, -2.0]),
                RankedExample([[4, 3, 2, 1, 1]], [1], [3], [-0.5])]
    batch = collate_ranked(examples, pad_id=0)
    mask = batch["loss_mask"][:, :5].tolist()
    assert mask == [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["reference_logps"].tolist() == [-1.0, -2.0, -0.5]
    assert batch["flat_index"].tolist() == [[0, 1], [2, 0]]


def test_sequence_log_probs_equal_a_plain_forwards_log_softmax(tiny_path):
    from rlhf.models import SequenceLogProbs

    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    ids = torch.tensor([[1, 8, 9, 10, 11, 0], [1, 12, 13, 14, 15, 16]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    responses = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        ours = SequenceLogProbs(model)(ids, attention, responses)
        logp = model(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
    expected = [sum(logp[row, t - 1, ids[row, t]].item() for t in range(6) if responses[row, t])
                for row in range(2)]
    assert ours.tolist() == pytest.approx(expected, abs=1e-4)


def test_dpo_starts_at_log_2_learns_the_rankings_and_writes_a_plain_folder(tmp_path, tiny_path):
    data = write_synthetic_data(tmp_path / "data", n_demos=8, n_comparisons=64, n_prompts=4)
    metrics = tmp_path / "m.jsonl"
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "dpo", f"model={tiny_path}",
                           f"data=[{data['comparisons']}]", f"output_dir={tmp_path / 'dpo'}", "max_steps=8",
                           "batch_size=4", "learning_rate=1e-3", "max_length=128", "mixed_precision=fp32",
                           "valid_fraction=0.2", f"metrics_file={metrics}"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [row["dpo/loss"] for row in rows if "dpo/loss" in row]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the model: margins 0
    assert min(losses[-3:]) < losses[0] - 0.1
    final = json.loads((tmp_path / "dpo" / "rlhf.json").read_text())
    assert final["stage"] == "dpo" and final["metrics"]["valid/accuracy"] > 0.6
    AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")


def test_dpo_without_data_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "dpo", f"output_dir={tmp_path / 'x'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["rlhf: error: dpo: no comparison files given (set data=[FILE, ...])"]
    assert not (tmp_path / "x").exists()
