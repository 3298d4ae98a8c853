"""Every loss and advantage function against values worked out by hand."""

import math

import pytest
import torch

from rlhf.losses import (
    adaptive_kl_coef,
    explained_variance,
    gae_advantages,
    kl_penalized_rewards,
    length_regressed_scores,
    masked_mean,
    ppo_policy_loss,
    ppo_ptx_loss,
    ppo_value_loss,
    ranking_loss,
    response_lm_loss,
    rloo_advantages,
    token_logprobs,
    token_logprobs_and_entropy,
    whiten,
)


def softplus(x):
    return math.log1p(math.exp(x))


def test_response_lm_loss_counts_only_masked_targets():
    # V = 2; logits chosen so p(token 1) = σ(ln 3) = 0.75 at every position
    logits = torch.tensor([[[0.0, math.log(3)]] * 4])
    input_ids = torch.tensor([[0, 1, 0, 1]])
    # prompt = positions 0-1, response = positions 2-3 → targets 0 and 1 at positions 2, 3
    loss_mask = torch.tensor([[0, 0, 1, 1]])
    expected = -(math.log(0.25) + math.log(0.75)) / 2
    assert response_lm_loss(logits, input_ids, loss_mask).item() == pytest.approx(expected, rel=1e-6)
    # padding after the response changes nothing
    padded = response_lm_loss(torch.cat([logits, logits[:, :1]], 1), torch.tensor([[0, 1, 0, 1, 5 % 2]]),
                              torch.tensor([[0, 0, 1, 1, 0]]))
    assert padded.item() == pytest.approx(expected, rel=1e-6)


def test_token_logprobs_divides_by_temperature():
    logits = torch.tensor([[[2.0, 0.0]]])
    at_t2 = token_logprobs(logits, torch.tensor([[0]]), temperature=2.0).item()
    assert at_t2 == pytest.approx(-softplus(-1.0), rel=1e-6)  # log σ(2/2)


def test_entropy_of_uniform_is_log_v():
    logprobs, entropy = token_logprobs_and_entropy(torch.zeros(1, 1, 8), torch.tensor([[3]]))
    assert entropy.item() == pytest.approx(math.log(8), rel=1e-6)
    assert logprobs.item() == pytest.approx(-math.log(8), rel=1e-6)


def test_log_probs_with_entropy_carry_the_gradient_of_log_probs_alone_and_a_hand_computed_entropy():
    # position 0: logits (log 3, 0) at temperature 1 -> p = (3/4, 1/4); 9 rows so that chunks of 4 are crossed
    logits = torch.zeros(9, 2, 2)
    logits[:, 0, 0] = math.log(3.0)
    logits[:, 1] = torch.tensor([0.0, 2.0])
    tokens = torch.tensor([[1, 0]] * 9)
    theirs = logits.clone().requires_grad_()
    ours = logits.clone().requires_grad_()
    logprobs, entropy = token_logprobs_and_entropy(ours, tokens, temperature=2.0)
    assert not entropy.requires_grad and entropy.shape == logprobs.shape == (9, 2)
    # temperature 2: position 0 has p ∝ (√3, 1), position 1 p ∝ (1, e)
    p0 = torch.tensor([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1.0)
    p1 = torch.tensor([1.0, math.e]) / (1.0 + math.e)
    expected_h = torch.stack([-(p * p.log()).sum() for p in (p0, p1)])
    torch.testing.assert_close(entropy, expected_h.expand(9, 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logprobs[0], torch.stack([p0[1].log(), p1[0].log()]), rtol=1e-6, atol=1e-6)
    logprobs.sum().backward()
    torch.gather((theirs / 2.0).log_softmax(-1), 2, tokens[..., None]).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_ranking_loss_k2():
    loss, accuracy = ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 2]]), torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(softplus(-1.0), rel=1e-6)
    assert accuracy.item() == 1.0


def test_ranking_loss_k3_is_mean_over_three_pairs():
    loss, accuracy = ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]), torch.ones(1, 3))
    expected = (softplus(-1.0) + softplus(-2.0) + softplus(-1.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == 1.0


def test_ranking_loss_k4_with_tie_makes_five_pairs():
    # ranks 1, 2, 2, 3: the tie (responses 1 and 2) makes no pair → 5 of the 6 pairs remain
    scores = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    loss, accuracy = ranking_loss(scores, torch.tensor([[1, 2, 2, 3]]), torch.ones(1, 4))
    margins = [0 - 1, 0 + 1, 0 - 0.5, 1 - 0.5, -1 - 0.5]  # (0,1) (0,2) (0,3) (1,3) (2,3)
    assert loss.item() == pytest.approx(sum(softplus(-m) for m in margins) / 5, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 5)


def test_ranking_loss_averages_prompts_with_different_k():
    scores = torch.tensor([[1.0, 0.0, 9.0], [2.0, 1.0, 0.0]])
    ranks = torch.tensor([[1, 2, 0], [1, 2, 3]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    loss, _ = ranking_loss(scores, ranks, valid)
    first = softplus(-1.0)
    second = (softplus(-1.0) + softplus(-2.0) + softplus(-1.0)) / 3
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_ranking_loss_all_ties_is_an_error():
    with pytest.raises(ValueError, match="no prompt"):
        ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 1]]), torch.ones(1, 2))


def test_kl_penalty_per_token_and_score_at_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -9.0], [-2.0, -1.0, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0, -1.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.0, -0.5]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 3.0, 0.0], [-0.1, 0.0, 0.05 - 1.0]]))
    # Σ_t kl_t is the sequence log-ratio log π(y) − log π_ref(y)
    assert kl.sum(1).tolist() == pytest.approx([0.5, 0.5])


def test_length_regression_removes_the_slope_from_the_fitted_episodes_only():
    """Fitted (T, r): (10, 1), (20, 2.5), (30, 2); T̄ = 20, r̄ = 11/6, Σ(T − T̄)(r − r̄) = 10 (the
    middle term is 0, the others −10·(−5/6) + 10·(1/6)), Σ(T − T̄)² = 200, so b = 0.05 score per
    token, and r' = r − 0.05·(T − 20) = 1.5, 2.5, 1.5. The fourth episode (a truncated one, with the
    fixed no-EOS score) is not fitted and keeps its score."""
    scores, lengths = torch.tensor([1.0, 2.5, 2.0, -1.0]), torch.tensor([10, 20, 30, 64])
    regressed, slope = length_regressed_scores(scores, lengths, torch.tensor([True, True, True, False]))
    assert slope.item() == pytest.approx(0.05)
    torch.testing.assert_close(regressed, torch.tensor([1.5, 2.5, 1.5, -1.0]))
    assert regressed[:3].mean().item() == pytest.approx(11 / 6)  # the fitted mean is kept
    # the same episodes with the fourth fitted too: its length now weighs in and it moves
    _, all_slope = length_regressed_scores(scores, lengths, torch.ones(4, dtype=torch.bool))
    assert all_slope.item() < 0
    # nothing to fit: one length for all, or a single fitted episode
    for fit_lengths, fit in ((torch.full((4,), 7), torch.ones(4, dtype=torch.bool)),
                             (lengths, torch.tensor([False, True, False, False]))):
        same, none = length_regressed_scores(scores, fit_lengths, fit)
        assert none.item() == 0.0
        torch.testing.assert_close(same, scores)


def test_gae_three_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1; δ0 = 0.6 − 0.5 = 0.1
    a2 = 0.3
    a1 = 0.1 + 0.95 * a2
    a0 = 0.1 + 0.95 * a1
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_ignores_padding_after_the_response():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 9.0]])
    advantages, returns = gae_advantages(rewards, values, torch.tensor([[1, 1, 0]]), gamma=1.0, lam=0.5)
    a1 = 1.0 - 0.6
    a0 = (0.6 - 0.5) + 0.5 * a1
    assert advantages[0].tolist() == pytest.approx([a0, a1, 0.0])
    assert returns[0, 2].item() == 0.0


def test_whiten_uses_only_masked_entries():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    out = whiten(values, torch.tensor([[1, 1, 1, 0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)  # mean 2, unbiased var 1
    kept = whiten(values, torch.tensor([[1, 1, 1, 0]]), shift_mean=False)
    assert kept[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_whiten_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))


def test_policy_loss_clips_the_ratio():
    logprobs = torch.tensor([[math.log(1.5), math.log(1.5), 0.0]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    loss, stats = ppo_policy_loss(logprobs, old, advantages, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    # A = +1: max(−1.5, −1.2) = −1.2 (clipped); A = −1: max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2, rel=1e-6)


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[0.3, -0.1]])
    loss, stats = ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), advantages, torch.ones(1, 2))
    assert loss.item() == pytest.approx(-0.1, rel=1e-6)
    assert stats["clipfrac"].item() == 0.0 and stats["approxkl"].item() == 0.0


def test_value_loss_clips_around_old_values():
    values = torch.tensor([[1.0, 0.9]])
    old_values = torch.tensor([[0.5, 0.5]])
    returns = torch.tensor([[0.0, 1.0]])
    loss, clipfrac = ppo_value_loss(values, old_values, returns, torch.ones(1, 2), clip_range=0.2)
    # token 0: unclipped (1 − 0)² = 1, clipped (0.7 − 0)² = 0.49 → 1
    # token 1: unclipped (0.9 − 1)² = 0.01, clipped (0.7 − 1)² = 0.09 → 0.09 (clipping bites)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.09) / 2, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


def test_ptx_mix_is_one_objective_with_gamma_weight():
    ptx_param = torch.tensor(2.0, requires_grad=True)
    loss = ppo_ptx_loss(torch.tensor(1.0), torch.tensor(2.0), ptx_param * 1.5, value_coef=0.1, ptx_coef=27.8)
    assert loss.item() == pytest.approx(1.0 + 0.2 + 27.8 * 3.0)
    loss.backward()
    assert ptx_param.grad.item() == pytest.approx(27.8 * 1.5)


def test_masked_mean_and_explained_variance():
    assert masked_mean(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([1, 0, 1])).item() == 2.0
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(returns, returns, torch.ones(1, 3)).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), returns, torch.ones(1, 3)).item() == pytest.approx(0.0)


def test_adaptive_kl_coef_moves_towards_target_and_is_clipped():
    assert adaptive_kl_coef(0.1, observed_kl=12.0, target_kl=6.0, n_steps=100, horizon=1000) == \
        pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert adaptive_kl_coef(0.1, observed_kl=5.4, target_kl=6.0, n_steps=100, horizon=1000) == \
        pytest.approx(0.1 * (1 - 0.1 * 0.1))


def test_whitening_across_processes_equals_whitening_the_whole_batch():
    """Two 'processes' (threads) each hold half the rows; a summing reduce makes each whiten (and fit
    the length slope) with the statistics of all rows, as one process holding the whole batch does."""
    import threading

    from rlhf.losses import explained_variance, masked_mean, whiten

    torch.manual_seed(0)
    values, other = torch.randn(6, 5) * 3 + 1, torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    lengths, fit = torch.tensor([3, 9, 4, 12, 7, 5]), torch.tensor([True, True, False, True, True, True])
    halves = [slice(0, 2), slice(2, 6)]  # unequal shares, as uneven response lengths give
    barrier, posted, results = threading.Barrier(2), [None, None], [None, None]

    def process(rank: int):
        def reduce(sums):
            posted[rank] = sums
            barrier.wait()
            total = posted[0] + posted[1]
            barrier.wait()
            return total
        rows = halves[rank]
        results[rank] = (whiten(values[rows], mask[rows], reduce=reduce),
                         whiten(values[rows], mask[rows], shift_mean=False, reduce=reduce),
                         masked_mean(values[rows], mask[rows], reduce=reduce),
                         explained_variance(other[rows], values[rows], mask[rows], reduce=reduce),
                         length_regressed_scores(other[rows, 0], lengths[rows], fit[rows], reduce=reduce))

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = (whiten(values, mask), whiten(values, mask, shift_mean=False), masked_mean(values, mask),
             explained_variance(other, values, mask), length_regressed_scores(other[:, 0], lengths, fit))
    for rank, rows in enumerate(halves):
        torch.testing.assert_close(results[rank][0], whole[0][rows])
        torch.testing.assert_close(results[rank][1], whole[1][rows])
        torch.testing.assert_close(results[rank][2], whole[2])
        torch.testing.assert_close(results[rank][3], whole[3])
        torch.testing.assert_close(results[rank][4][0], whole[4][0][rows])
        torch.testing.assert_close(results[rank][4][1], whole[4][1])
    # and without the reduce, each half's own statistics: not the same numbers
    assert not torch.allclose(whiten(values[:2], mask[:2]), whole[0][:2])


def test_rloo_advantages_leave_one_out_by_hand():
    """k = 4, rewards 1, 2, 3, 6: the others' means are 11/3, 10/3, 3, 2."""
    got = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4)
    torch.testing.assert_close(got, torch.tensor([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]))
    assert abs(got.sum().item()) < 1e-6  # a group's advantages sum to 0
    # two groups of k = 2: each sample against its one sibling, groups never mixed
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2),
                               torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="not groups of k = 4"):
        rloo_advantages(torch.ones(6), 4)
