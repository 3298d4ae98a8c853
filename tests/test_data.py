"""Readers, splits and collation, on fixtures and on real lines of the shared files."""

import gzip
import itertools
import json

import pytest
import torch

from conftest import shared_file
from rlhf.data.collate import (
    LengthGroupedBatches,
    PromptSampler,
    collate_ranked,
    collate_sft,
    encode_comparisons,
    encode_demonstrations,
    encode_response,
    pad,
    split_records,
)
from rlhf.data.readers import (
    DataError,
    read_comparisons,
    read_demonstrations,
    read_prompts,
    read_text,
    split_hh_dialogue,
)
from rlhf.data.records import Comparison, Demonstration, Prompt
from rlhf.models import load_tokenizer


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hh_dialogue_split_on_a_real_line():
    path = shared_file("hh-rlhf-harmless/pairs.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        first = json.loads(next(handle))
    comparison = read_comparisons(path, skip_invalid=True)[0]
    assert comparison.ranks == [1, 2]
    # the first line is a 3-turn dialogue: user, assistant, user, assistant, user before the last reply
    assert [m["role"] for m in comparison.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert comparison.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first["chosen"].endswith(comparison.responses[0])
    assert first["rejected"].endswith(comparison.responses[1])
    assert comparison.responses[0] != comparison.responses[1]


def test_hh_file_reports_its_three_mismatched_and_two_empty_lines(caplog):
    path = shared_file("hh-rlhf-harmless/pairs.jsonl.gz")
    with pytest.raises(DataError, match=r"pairs\.jsonl\.gz:\d+: "):
        read_comparisons(path)
    comparisons = read_comparisons(path, skip_invalid=True)
    assert len(comparisons) == 1812 - 5
    assert "skipped 5 invalid record(s)" in caplog.text


def test_self_instruct_with_and_without_input():
    demos = read_demonstrations(shared_file("self-instruct/seed_tasks.jsonl"))
    assert len(demos) >= 175
    without_input = demos[0]
    assert without_input.prompt == [{"role": "user", "content":
                                     "Is there anything I can eat for a breakfast that doesn't include eggs, yet "
                                     "includes protein, and has roughly 700-1000 calories?"}]
    with_input = demos[1]
    assert with_input.prompt[0]["content"] == (
        "What is the relation between the given pairs?\n\nNight : Day :: Right : Left")
    assert with_input.response.startswith("The relation between the given pairs")


def test_multi_turn_hh_prompt_keeps_roles():
    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    prompt, reply = split_hh_dialogue(dialogue, "f:1", "chosen")
    assert prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "how?"}]
    assert reply == "like this"


def test_canonical_shapes(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "q"}], "responses": [
            {"text": "x", "rank": 2}, {"text": "y", "rank": 1}, {"text": "z", "rank": 2}]},
    ])
    first, second = read_comparisons(path)
    assert (first.responses, first.ranks) == (["a", "b"], [1, 2])
    assert (second.responses, second.ranks) == (["x", "y", "z"], [2, 1, 2])
    demos = read_demonstrations(write_lines(tmp_path / "d.jsonl", [
        {"prompt": "p", "completion": "c"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"instruction": "i", "input": "", "output": "o"},
    ]))
    assert [(d.prompt[-1]["content"], d.response) for d in demos] == [("p", "c"), ("u", "a"), ("i", "o")]
    assert read_prompts(write_lines(tmp_path / "p.jsonl", [{"prompt": "hello", "user_id": "u1"}]))[0].user_id == "u1"


BAD_INPUTS = {
    "malformed JSON": ('{"prompt": "a", "chosen": ', r"c\.jsonl:2: malformed JSON"),
    "missing field": ({"prompt": "a", "chosen": "b"}, r"c\.jsonl:2: missing field 'rejected'"),
    "empty response": ({"prompt": "a", "chosen": " ", "rejected": "b"}, r"c\.jsonl:2: field 'chosen' is empty"),
    "empty prompt": ({"prompt": "", "chosen": "a", "rejected": "b"}, r"c\.jsonl:2: field 'prompt' is empty"),
    "one response": ({"prompt": "a", "responses": [{"text": "x", "rank": 1}]},
                     r"c\.jsonl:2: field 'responses' needs at least 2"),
    "rank not integer": ({"prompt": "a", "responses": [{"text": "x", "rank": "1"}, {"text": "y", "rank": 2}]},
                         r"c\.jsonl:2: field 'responses\[0\]\.rank' must be an integer"),
    "all ties": ({"prompt": "a", "responses": [{"text": "x", "rank": 1}, {"text": "y", "rank": 1}]},
                 r"c\.jsonl:2: .*all ranks equal"),
    "not an object": ('[1, 2]', r"c\.jsonl:2: expected a JSON object"),
    "unknown shape": ({"question": "a"}, r"c\.jsonl:2: not a comparison"),
    "hh without assistant": ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"},
                             r"c\.jsonl:2: field 'chosen' has no"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_comparison_lines_name_file_line_and_field(tmp_path, case):
    bad, message = BAD_INPUTS[case]
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, bad])
    with pytest.raises(DataError, match=message):
        read_comparisons(path)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file does not exist"):
        read_demonstrations(tmp_path / "nope.jsonl")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "ok", "response": "fine"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        read_demonstrations(latin1)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        read_text(empty)


def test_sequences_longer_than_max_length_error_or_skip(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    demos = [Demonstration([{"role": "user", "content": "hi"}], "x" * 100, source="d.jsonl:7"),
             Demonstration([{"role": "user", "content": "hi"}], "ok", source="d.jsonl:8")]
    with pytest.raises(DataError, match=r"d\.jsonl:7: prompt \+ response is \d+ tokens, longer than max_length 50"):
        encode_demonstrations(tokenizer, demos, 50, on_too_long="error")
    assert len(encode_demonstrations(tokenizer, demos, 50, on_too_long="skip")) == 1


def test_sft_masks_prompt_and_ends_response_with_one_eos(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    [example] = encode_demonstrations(tokenizer, [Demonstration([{"role": "user", "content": "hi"}], "yo")], 64)
    prompt_text = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m == 0])
    assert prompt_text == "<|user|>hi\n<|assistant|>"
    response = [t for t, m in zip(example.input_ids, example.loss_mask) if m == 1]
    assert response == tokenizer("yo")["input_ids"] + [tokenizer.eos_token_id]
    assert encode_response(tokenizer, "yo" + tokenizer.eos_token).count(tokenizer.eos_token_id) == 1
    batch = collate_sft([example, example], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 32)  # padded up to a multiple of 32
    assert batch["attention_mask"][0].sum() == len(example.input_ids)
    assert batch["loss_mask"][0, len(example.input_ids):].sum() == 0
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_collate_ranked_lays_out_every_response_once(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    comparisons = [Comparison([{"role": "user", "content": "a"}], ["x", "yy"], [1, 2]),
                   Comparison([{"role": "user", "content": "b"}], ["p", "q", "r"], [2, 1, 3])]
    batch = collate_ranked(encode_comparisons(tokenizer, comparisons, 64), tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 5  # K forwards, not K·(K−1)
    assert batch["flat_index"].tolist() == [[0, 1, 0], [2, 3, 4]]
    assert batch["valid"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["ranks"].tolist() == [[1, 2, 0], [2, 1, 3]]


def test_pad_left_and_right():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_split_is_deterministic_and_by_user():
    prompts = [Prompt([{"role": "user", "content": f"q{i}"}], user_id=f"u{i % 7}") for i in range(200)]
    first = split_records(prompts, seed=3, valid_fraction=0.3, test_fraction=0.2)
    second = split_records(prompts, seed=3, valid_fraction=0.3, test_fraction=0.2)
    assert {k: [p.prompt for p in v] for k, v in first.items()} == {k: [p.prompt for p in v] for k, v in second.items()}
    users = {name: {p.user_id for p in split} for name, split in first.items()}
    for a, b in itertools.combinations(users, 2):
        assert not users[a] & users[b], f"a user is in both {a} and {b}"
    assert sum(map(len, first.values())) == 200


def test_prompt_sampler_without_weights_takes_every_prompt_once_per_pass():
    sampler = PromptSampler([3, 2], None, torch.Generator().manual_seed(0))
    draws = [sampler.draw() for _ in range(15)]
    for start in range(0, 15, 5):
        assert sorted(draws[start:start + 5]) == [0, 1, 2, 3, 4]
    assert draws[:5] != draws[5:10] or draws[5:10] != draws[10:]  # a fresh order each pass


def test_prompt_sampler_with_weights_keeps_the_mix_and_cycles_each_source():
    """Weights 1 : 3 over sources of 4 and 2 prompts: a quarter of the draws from the first source
    although it holds two thirds of the prompts; each source's own draws go through all its prompts
    before any repeats."""
    sampler = PromptSampler([4, 2], [1.0, 3.0], torch.Generator().manual_seed(0))
    draws = [sampler.draw() for _ in range(4000)]
    second = [d for d in draws if d >= 4]
    assert 0.72 < len(second) / 4000 < 0.78  # 0.75 ± 4.4 standard errors
    first = [d for d in draws if d < 4]
    for start in range(0, len(first) - 3, 4):
        assert sorted(first[start:start + 4]) == [0, 1, 2, 3]
    for start in range(0, len(second) - 1, 2):
        assert sorted(second[start:start + 2]) == [4, 5]


def test_a_restored_prompt_sampler_continues_the_uninterrupted_order():
    def fresh(weights):
        return PromptSampler([5, 3, 2], weights, torch.Generator().manual_seed(7))

    for weights in (None, [0.2, 0.5, 0.3]):
        uninterrupted = fresh(weights)
        expected = [uninterrupted.draw() for _ in range(30)]
        first = fresh(weights)
        head = [first.draw() for _ in range(11)]
        state, generator_state = first.state(), first.generator.get_state()
        resumed = fresh(weights)
        resumed.generator.set_state(generator_state)
        resumed.restore(json.loads(json.dumps(state)))  # as the checkpoint stores it
        assert head + [resumed.draw() for _ in range(19)] == expected


def test_prompt_sampler_reads_a_flat_queue_and_rejects_a_mismatched_one():
    sampler = PromptSampler([4], None, torch.Generator().manual_seed(0))
    sampler.restore([2, 0])  # a checkpoint written before prompt weights: one flat queue
    assert [sampler.draw(), sampler.draw()] == [0, 2]
    weighted = PromptSampler([4, 2], [1.0, 1.0], torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="the checkpoint's prompt order has 1 sources, this run 2"):
        weighted.restore([2, 0])
    with pytest.raises(DataError, match="prompt_weights: 1 weights for 2 prompt files"):
        PromptSampler([4, 2], [1.0], torch.Generator())


def test_length_grouped_batches_cover_everything_once_and_reduce_padding():
    lengths = [int(x) for x in torch.randint(5, 300, (1000,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=0, group_batches=16)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 125
    assert sorted(i for batch in first for i in batch) == list(range(1000))
    assert first != second  # a new order each epoch

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    random_batches = [list(range(i, i + 8)) for i in range(0, 1000, 8)]
    assert padded(first) < 0.7 * padded(random_batches)


def test_truncate_keeps_the_end_of_the_prompt_and_the_final_eos():
    from rlhf.data.collate import truncate_pair

    prompt, response = list(range(10)), [20, 21, 22, 99]
    assert truncate_pair(prompt, response, 20) == (prompt, response)  # fits: unchanged
    assert truncate_pair(prompt, response, 8) == ([6, 7, 8, 9], [20, 21, 22, 99])
    long_response = list(range(20, 40)) + [99]
    short_prompt, cut = truncate_pair(prompt, long_response, 12)
    assert short_prompt == [7, 8, 9] and len(cut) == 9 and cut[-1] == 99 and cut[:3] == [20, 21, 22]


def test_on_too_long_truncate_keeps_the_record_in_one_warning_for_all(tiny_path, caplog):
    import logging

    tokenizer = load_tokenizer(tiny_path)
    demos = [Demonstration([{"role": "user", "content": "hello there"}], "x" * 100, source=f"d.jsonl:{line}")
             for line in (3, 5, 8, 13)]
    demos.append(Demonstration([{"role": "user", "content": "hi"}], "ok", source="d.jsonl:21"))
    caplog.set_level(logging.DEBUG, logger="rlhf.data.collate")
    examples = encode_demonstrations(tokenizer, demos, 50, on_too_long="truncate")
    assert [len(example.input_ids) for example in examples[:4]] == [50] * 4 and len(examples) == 5
    assert examples[0].input_ids[-1] == tokenizer.eos_token_id
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["truncated 4 of 5 demonstrations longer than 50 tokens "
                        "(d.jsonl:3, d.jsonl:5, d.jsonl:8, ...; -v lists each)"]
    assert "truncating d.jsonl:13: prompt + response is" in caplog.text  # each one at debug level (-v)


def test_the_warning_about_long_prompts_names_their_file(tiny_path, caplog):
    from rlhf.data.collate import encode_prompts

    tokenizer = load_tokenizer(tiny_path)
    prompts = [Prompt([{"role": "user", "content": "hi"}]), Prompt([{"role": "user", "content": "x " * 200}])]
    assert len(encode_prompts(tokenizer, prompts, 64, origin="red-team.jsonl")) == 1
    assert "dropped 1 of 2 prompts of red-team.jsonl longer than 64 tokens" in caplog.text
    caplog.clear()
    encode_prompts(tokenizer, prompts, 64)
    assert "dropped 1 of 2 prompts longer than 64 tokens" in caplog.text


def test_deeply_nested_metadata_is_a_one_line_error_not_a_recursion(tmp_path):
    """Found by the fuzz test: metadata nested 800–1,400 levels deep parsed, then exhausted Python's stack."""
    import json as json_module

    from rlhf.data.readers import DataError, read_demonstrations

    deep = "[" * 800 + "]" * 800  # json reads it; walking it recursively did not
    path = tmp_path / "deep.jsonl"
    path.write_text(json_module.dumps({"prompt": "p", "response": "r"})[:-1] + f', "metadata": {{"x": {deep}}}}}\n')
    with pytest.raises(DataError, match=r"deep.jsonl:1: field 'metadata' is nested deeper than 64 levels"):
        read_demonstrations(path)
    shallow = tmp_path / "ok.jsonl"
    shallow.write_text(json_module.dumps({"prompt": "p", "response": "r", "metadata": {"x": [[1, {"y": 2.5}]]}}) + "\n")
    assert read_demonstrations(shallow)[0].metadata == {"x": [[1, {"y": 2.5}]]}


def test_shared_prompt_layout_by_hand():
    from rlhf.data.collate import RankedExample, collate_shared_prompt

    # prompt [7, 8], responses [9] and [10, 11]; a second prompt [5] with responses [6, 6] [4] [3]
    first = RankedExample([[7, 8, 9], [7, 8, 10, 11]], [2, 1], [2, 2])
    second = RankedExample([[5, 6, 6], [5, 4], [5, 3]], [1, 2, 3], [1, 1, 1])
    batch = collate_shared_prompt([first, second], pad_id=0)
    width = batch["input_ids"].shape[1]
    assert width == 32  # padded to PAD_MULTIPLE
    assert batch["input_ids"][0, :5].tolist() == [7, 8, 9, 10, 11]
    assert batch["input_ids"][1, :5].tolist() == [5, 6, 6, 4, 3]
    assert batch["position_ids"][0, :5].tolist() == [0, 1, 2, 2, 3]
    assert batch["position_ids"][1, :5].tolist() == [0, 1, 2, 1, 1]
    mask = batch["attention_mask"][:, 0]
    assert mask.shape == (2, width, width) and mask.dtype == torch.bool
    expected_first = [[1, 0, 0, 0, 0],   # prompt token 7 sees itself
                      [1, 1, 0, 0, 0],   # 8 sees the prompt
                      [1, 1, 1, 0, 0],   # 9 (response 1) sees the prompt and itself
                      [1, 1, 0, 1, 0],   # 10 (response 2) the prompt and itself, not response 1
                      [1, 1, 0, 1, 1]]
    assert mask[0, :5, :5].int().tolist() == expected_first
    assert mask[1, 4, :5].int().tolist() == [1, 0, 0, 0, 1]  # response 3 (token 3): the prompt and itself
    assert mask[0, 7].int().tolist() == [0] * 7 + [1] + [0] * (width - 8)  # padding: itself only
    assert batch["score_index"].tolist() == [[2, 4, 0], [width + 2, width + 3, width + 4]]
    assert batch["valid"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["ranks"].tolist() == [[2, 1, 0], [1, 2, 3]]
    # DPO's labels: which output predicts each response token (the prompt's last for a response's
    # first token), and the slot (the response's first token) its log-prob is summed into
    w = width
    assert batch["label_source"][:, :6].tolist() == [[-1, -1, 1, 1, 3, -1], [-1, w, w + 1, w, w, -1]]
    assert batch["label_slot"][:, :6].tolist() == [[-1, -1, 2, 3, 3, -1], [-1, w + 1, w + 1, w + 3, w + 4, -1]]
    assert (batch["label_source"][:, 6:] == -1).all() and (batch["label_slot"][:, 6:] == -1).all()
    assert batch["flat_index"].tolist() == [[2, 3, 0], [w + 1, w + 3, w + 4]]
    assert "reference_logps" not in batch
    first.reference_logps, second.reference_logps = [-1.0, -2.0], [-3.0, -4.0, -5.0]
    reference = collate_shared_prompt([first, second], pad_id=0)["reference_logps"]
    assert reference[batch["flat_index"]].tolist() == [[-1.0, -2.0, 0.0], [-3.0, -4.0, -5.0]]
    assert reference.abs().sum() == 15.0  # nothing anywhere else
    additive = collate_shared_prompt([first], pad_id=0, additive=True)["attention_mask"][0, 0]
    assert additive[3, 2] == torch.finfo(torch.float32).min and additive[3, 1] == 0
    with pytest.raises(ValueError, match="another prompt"):
        collate_shared_prompt([RankedExample([[1, 2, 3], [1, 4, 3]], [1, 2], [2, 2])], pad_id=0)
