"""One validated config per stage, loadable from YAML, every field overridable as ``key=value``.

Defaults are the InstructGPT paper's values where it gives them (Ouyang et al. 2022, App. C),
else those of OpenAI's 2019 RLHF code. Small-scale presets live in ``rlhf/configs/*.yaml``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhf.data.records import one_line


class ConfigError(ValueError):
    """A config problem, naming the field: ``ppo.kl_coef: Input should be a valid number``."""


class LoraSettings(BaseModel):
    """LoRA adapters (PEFT) in place of full fine-tuning: ``lora: {r: 16}`` in YAML, ``sft.lora={}`` for
    the defaults. The stage's output is still a merged, plain HF folder; the adapter is saved beside
    it in ``adapter/``."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16.0, gt=0, description="scaling: the update is (alpha / r) · B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_proj, v_proj]); all-linear: every linear "
        "layer but the output layer")
    base_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="dtype of the frozen weights under the adapters: bf16 halves their memory; it needs "
        "mixed_precision bf16 (the matmuls then see the same numbers) and rounds the adapted layers of the "
        "merged output to bf16 precision (exact for models released in bf16)")


class HealthSettings(BaseModel):
    """Thresholds of PPO's collapse and reward-hacking checks (:mod:`rlhf.train.health`)."""

    model_config = ConfigDict(extra="forbid")

    max_kl: float = Field(20.0, gt=0, description="KL to SFT (nats per response) above which to warn")
    kl_growth: float = Field(3.0, gt=1, description="warn when KL exceeds this multiple of its recent mean")
    min_kl_for_growth: float = Field(1.0, ge=0, description="…once it is above this many nats")
    min_entropy: float = Field(0.05, ge=0, description="policy entropy (nats per token) below which to warn")
    max_repeated_ngrams: float = Field(
        0.5, ge=0, le=1, description="warn when this share of the responses' 4-grams repeat earlier ones")
    max_length_drift: float = Field(
        1.0, gt=0, description="warn when the mean response length moves by this fraction from the first steps")
    min_eos_fraction_ratio: float = Field(
        0.5, ge=0, le=1, description="warn when the share of responses that end falls below this ratio of "
        "the first steps'")
    window: int = Field(3, ge=1, description="steps that set the baseline and the recent mean")


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("tiny", description="input model: preset name, HF folder or hub id")
    output_dir: str = Field("runs/stage", description="where the finished HF folder is written")
    seed: int = Field(0, ge=0, lt=2**32, description="random seed (0 to 2**32 - 1)")
    mixed_precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 autocast where the hardware has fast bf16, else fp32")
    max_length: int = Field(512, gt=8, description="longest prompt + response in tokens")
    on_too_long: Literal["skip", "truncate", "error"] = Field(
        "skip", description="a record longer than max_length: drop it, truncate it (with a warning) or stop")
    skip_invalid: bool = Field(False, description="log and drop malformed records instead of stopping")
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    metrics_file: str | None = Field(None, description="JSONL file the stage appends metrics to")
    max_examples: int | None = Field(
        None, ge=1, description="train on only the first N training records after the split (time budgets)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30 % more compute")
    chat_template: str | None = Field(
        None, description="Jinja chat template (the text, or a file holding it) replacing the tokenizer's; "
        "a tokenizer without one gets the plain '### User:' / '### Assistant:' template")
    lora: LoraSettings | None = Field(None, description="train LoRA adapters instead of every weight")
    attn_implementation: str | None = Field(
        None, description="the attention kernel of the models the stage trains (in PPO the policy, the value "
        "model and the reference the policy starts equal to; the frozen reward model keeps the default), as "
        "transformers names it: sdpa, eager, "
        "flash_attention_2, … (null: eager on a CPU when max_length is 192 tokens or fewer, where it trains 6-7 % "
        "faster than sdpa (BENCHMARKS.md); otherwise transformers' default, sdpa where the model has it)")
    train_layers: int | None = Field(
        None, ge=1, description="train only the top N transformer blocks (and the final norm and head; in PPO, "
        "of the policy and the value model); the embeddings and the blocks below stay frozen, and the backward "
        "pass stops at them (null: every layer)")
    checkpoint_every: int | None = Field(
        None, ge=1, description="write a resumable checkpoint every N optimizer steps (and at each epoch's end); "
        "null: only when stopped by SIGINT/SIGTERM")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    log_with: list[str] = Field(
        default_factory=list, description="experiment trackers through accelerate, e.g. [tensorboard] or [wandb] "
        "(install the tracker's package); metrics.jsonl is written either way")
    tracking_dir: str | None = Field(None, description="where local trackers write (default: OUTPUT_DIR/../tracking)")
    max_bad_steps: int = Field(
        10, ge=1, description="stop after this many updates in a row with a non-finite loss or gradient "
        "(each is skipped)")
    sharding: Literal["none", "fsdp2"] = Field(
        "none", description="fsdp2: shard the trained models' weights, gradients and optimizer states over the "
        "processes (FSDP2 through accelerate; `accelerate launch` with an FSDP2 config does the same); none: "
        "every process holds a whole copy (DDP)")
    check_replicas_every: int | None = Field(
        None, ge=1, description="on several processes, check every N optimizer steps that each holds the same "
        "weights (a run whose replicas drifted apart stops, naming the step and the processes)")

    @model_validator(mode="after")
    def _sharding_without_lora(self):
        if self.sharding == "fsdp2" and self.lora is not None:
            raise ConfigError("sharding: fsdp2 with lora is not supported yet; LoRA's frozen base is small enough "
                              "to replicate: use sharding: none (DDP), or full fine-tuning with fsdp2")
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        from rlhf.data.collate import check_split_fractions

        check_split_fractions(self.valid_fraction, self.test_fraction)  # a DataError is a ValueError
        return self


class SupervisedConfig(StageConfig):
    """How the stages that learn from a fixed data set (SFT, the reward model, DPO) run their loop."""

    micro_batch_tokens: int | None = Field(
        None, ge=1, description="cut each batch into micro-batches of at most this many padded tokens (rows × the "
        "longest) and accumulate their gradients: the same update as the whole batch, in bounded memory "
        "(null: the batch in one forward)")
    log_every: int = Field(
        1, ge=1, description="reduce and log the loss and metrics every N optimizer steps; in between they stay "
        "on the device (no host synchronisation: set 10-50 on a GPU)")
    compile: bool = Field(False, description="torch.compile the training model's forward (worth it on a GPU)")


class SFTConfig(SupervisedConfig):
    data: list[str] = Field(default_factory=list, description="demonstration files")
    epochs: int = Field(16, ge=1, description="paper: 16")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay to this fraction of the peak (paper: 10%)")
    dropout: float = Field(0.2, ge=0, lt=1, description="residual and attention dropout (paper: 0.2)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


class ComparisonsConfig(SupervisedConfig):
    """What the stages that learn from ranked comparisons share (the reward model, DPO)."""

    data: list[str] = Field(default_factory=list, description="comparison files (K ≥ 2 ranked responses)")
    epochs: int = Field(1, ge=1, description="paper: 1 (more overfits)")
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, description="prompts per batch, each with all its K responses (paper: 64)")
    grad_accum_steps: int = Field(1, ge=1)
    learning_rate: float = Field(9e-6, gt=0, description="paper: 9e-6")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


class RewardConfig(ComparisonsConfig):
    normalize_data: list[str] = Field(
        default_factory=list, description="demonstration files whose mean score is set to 0 after training")
    normalize_max_examples: int = Field(
        1024, ge=1, description="a seeded sample of this many demonstrations sets the bias")
    disjoint_from: str | None = Field(
        None, description="a reward-model folder: train on none of the comparisons it trained on (for a judge "
        "independent of the reward model PPO optimises)")
    full_data: list[str] = Field(
        default_factory=list, description="comparison files whose whole training split is trained on, beside the "
        "max_examples sample of data (the pipeline's contrast rankings, data.contrasts)")


class DPOConfig(ComparisonsConfig):
    """Direct preference optimisation from the SFT model on the reward model's comparisons."""

    beta: float = Field(0.1, gt=0, description="β: the strength of the implicit KL to the reference (paper: 0.1)")
    learning_rate: float = Field(1e-6, gt=0, description="paper: 1e-6")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)


class PPOConfig(StageConfig):
    model: str = Field("tiny", description="the SFT policy; also the frozen reference")
    reward_model: str = Field("", description="reward-model folder")
    value_model: str | None = Field(None, description="value init; default: the reward model")
    value_lora: bool = Field(True, description="with lora: the value model trains adapters too (else in full)")
    value_head: Literal["reward", "zero"] = Field(
        "reward", description="the value head's start: reward: as loaded, i.e. the reward model's head (the paper), or "
        "a fresh random one when value_model is a causal LM; zero: its weights zeroed, so V starts at one constant at "
        "every token, as in lm-human-preferences (docs/alignment.md)")
    prompts: list[str] = Field(default_factory=list, description="prompt files")
    prompt_weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="one per prompt file: the share of the episodes drawn from it (normalised; a small file "
        "repeats); null: every prompt once per pass, so each file's share is its share of the prompts")
    pretraining: str | None = Field(None, description="text file for the PPO-ptx mix")
    rollout_seed: int | None = Field(
        None, ge=0, lt=2**32, description="the seed of the prompt order, the sampling noise and the pretraining "
        "batches (null: seed); another value replicates PPO on the same data splits, which seed also decides")
    total_episodes: int = Field(256, ge=1)
    rollout_batch_size: int = Field(16, ge=2, description="episodes per PPO step (paper: 512)")
    num_minibatches: int = Field(1, ge=1, description="paper: 8")
    ppo_epochs: int = Field(1, ge=1, description="paper: 1")
    learning_rate: float = Field(9.65e-6, gt=0, description="policy LR (paper: 9.65e-6 at 1.3B)")
    value_learning_rate: float = Field(9e-6, gt=0, description="paper: 9e-6")
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    adam_eps: float = Field(1e-5, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    max_prompt_length: int = Field(256, ge=1)
    kl_coef: float = Field(0.02, ge=0, description="β (paper: 0.02)")
    adaptive_kl: bool = False
    target_kl: float = Field(6.0, gt=0, description="nats per episode, for adaptive β")
    kl_horizon: int = Field(10000, ge=1, description="episodes, for adaptive β")
    no_eos_score: float | None = Field(
        -1.0, description="the score of a response that hits max_new_tokens without ending (EOS), in place of "
        "the reward model's (lm-human-preferences, 'N+ implementation details': -1); null keeps the RM's")
    regress_out_length: bool = Field(
        False, description="subtract from each score its least-squares slope on response length, fitted in each "
        "rollout batch over the episodes the reward model scored (those that ended, with no_eos_score): the "
        "reward keeps its batch mean but no linear preference for shorter or longer replies (docs/alignment.md)")
    advantage: Literal["gae", "rloo"] = Field(
        "gae", description="gae: PPO with a value model (the paper); rloo: REINFORCE leave-one-out over rloo_k "
        "samples of each prompt, no value model, the same clipped update (Ahmadian et al. 2024)")
    rloo_k: int = Field(4, ge=2, description="with advantage=rloo: samples per prompt, k")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, ge=0)
    whiten_rewards: bool = False
    ptx_coef: float = Field(27.8, ge=0, description="γ of PPO-ptx (paper: 27.8); 0 disables the mix")
    ptx_batch_size: int = Field(8, ge=1, description="pretraining blocks per minibatch")
    ptx_block_size: int = Field(128, ge=8)
    eval_prompts: int = Field(64, ge=1, description="held-out prompts for the final PPO-vs-SFT comparison")
    snapshot_every: int = Field(
        0, ge=0, description="save the policy as a plain HF folder in OUTPUT/snapshots/step-N every N steps (0: "
        "never), for the over-optimisation curve (rlhf eval overoptimization)")
    rollout_engine: Literal["static", "eager"] = Field(
        "static", description="static: a static KV cache (CUDA graphs on a GPU, pre-packed bf16 weights on a CPU); "
        "eager: the plain dynamic-cache loop")
    compile_decode: bool | None = Field(
        None, description="torch.compile the decode step (null: on a GPU only, with CUDA graphs)")
    health: HealthSettings = Field(default_factory=HealthSettings, description="collapse and reward-hacking checks")
    ptx_held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="the end of the pretraining text never trained on (alignment-tax perplexity)")

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        problem = ppo_batching_problem(self.rollout_batch_size, self.num_minibatches, group=self.group_size)
        if problem:
            raise ValueError(problem)
        if self.prompt_weights is not None and len(self.prompt_weights) != len(self.prompts):
            raise ValueError(f"prompt_weights has {len(self.prompt_weights)} weights for {len(self.prompts)} prompt "
                             "files: give one per file of prompts, in their order")
        if self.max_prompt_length + self.max_new_tokens > self.max_length:
            raise ValueError(f"max_prompt_length + max_new_tokens ({self.max_prompt_length + self.max_new_tokens}) "
                             f"exceeds max_length ({self.max_length})")
        return self

    @property
    def run_seed(self) -> int:
        """What seeds PPO's own randomness: rollout_seed, else seed."""
        return self.seed if self.rollout_seed is None else self.rollout_seed

    @property
    def group_size(self) -> int:
        """Samples of one prompt in a batch, all on one process: rloo_k with RLOO, else 1."""
        return self.rloo_k if self.advantage == "rloo" else 1


def ppo_batching_problem(rollout_batch_size: int, num_minibatches: int, world_size: int = 1,
                         prefix: str = "", group: int = 1) -> str | None:
    """Why PPO's batch settings do not work on ``world_size`` processes, or ``None``: each process
    samples rollout_batch_size / world_size episodes and cuts them into ``num_minibatches``
    minibatches of at least 2 (advantages are whitened in each). With RLOO each process holds whole
    groups of ``group`` samples of one prompt. ``prefix`` goes before field names."""
    if rollout_batch_size % (world_size * group):
        if group > 1:
            where = f" times the number of processes ({world_size})" if world_size > 1 else ""
            return (f"{prefix}rollout_batch_size ({rollout_batch_size}) must be divisible by {prefix}rloo_k "
                    f"({group}){where}: each process samples whole groups of rloo_k responses to one prompt")
        return (f"{prefix}rollout_batch_size ({rollout_batch_size}) must be divisible by the number of processes "
                f"({world_size})")
    per_process = rollout_batch_size // world_size
    share = f"the {per_process} episodes of {prefix}rollout_batch_size"
    if world_size > 1:
        share = (f"each process's {per_process} episodes ({prefix}rollout_batch_size {rollout_batch_size} / "
                 f"{world_size} processes)")
    if per_process % num_minibatches:
        why = f"{per_process} is not divisible by num_minibatches"
    elif per_process // num_minibatches < 2:
        why = f"that leaves {per_process // num_minibatches} per minibatch"
    else:
        return None
    return (f"{prefix}num_minibatches ({num_minibatches}) must split {share} into equal minibatches of at least "
            f"2 episodes (advantages are whitened in each); {why}")


class DataPaths(BaseModel):
    model_config = ConfigDict(extra="forbid")

    synthetic: bool = Field(False, description="generate the tiny synthetic task into RUN_DIR/data")
    demonstrations: list[str] = Field(default_factory=list)
    comparisons: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list, description="default: the comparisons' prompts")
    prompt_weights: list[float] | None = Field(
        None, description="PPO's mix: one weight per file of prompts, the share of the episodes drawn from it "
        "(ppo.prompt_weights; docs/alignment.md)")
    pretraining: str | None = None
    contrasts: list[str] = Field(
        default_factory=list, description="demonstration files of polite refusals (of harmful requests) and answers "
        "(to ordinary ones): each becomes a ranking against the base model's own response and a generic refusal, "
        "written to RUN_DIR/data/contrasts.jsonl, that the proxy reward model trains on in full "
        "(rlhf.data.contrasts; docs/alignment.md)")
    skip_invalid: bool = False


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the report's responses; 0 = greedy")
    samples: int = Field(
        1, ge=1, description="draws per fixed and judged prompt; every policy draws sample j of a prompt with the "
        "same numbers. The refusal rates, the reward scores and the judge's win rates average over the draws; their "
        "intervals still resample prompts. The report shows draw 0, samples.jsonl has every draw")
    seed: int | None = Field(
        None, description="the seed of the evaluation's draws (null: the run's seed, which also splits the data): "
        "another seed measures the same weights on new draws")
    batch_size: int = Field(
        32, ge=1, description="prompts sampled together, in order of length (a prompt's response does not depend on "
        "it); at 32 a draw of the demo's three policies took 23 % less time than at 16, at 64 more than at 32 "
        "(BENCHMARKS.md)")
    perplexity_tokens: int = Field(16384, ge=1, description="held-out pretraining tokens scored per model")
    perplexity_block_size: int = Field(256, ge=8)
    report_prompts: int = Field(10, ge=0, description="prompts shown side by side in the reports (half harmful)")
    judge_prompts: int = Field(
        64, ge=0, description="held-out PPO prompts (its test split) the judge also scores, beside the fixed "
        "harmful and ordinary prompts")
    reference_data: list[str] | None = Field(
        None, description="demonstration files whose test split (human-written references) measures helpfulness "
        "as per-token log-likelihood; default: the run's demonstration files")
    benign_prompts: str | None = Field(
        None, description="a file of benign requests no stage trains on (any prompts format), on which each policy's "
        "over-refusal is measured: the share answered (one short sample each) and the exact probability of opening "
        "like a refusal. The demo uses TruthfulQA's questions (with benign_prompt_field: Question)")
    benign_prompt_field: str | None = Field(
        None, description="the column of benign_prompts that holds the request, when it is not 'prompt'")
    benign_limit: int = Field(128, ge=1, description="a seeded sample of at most this many benign_prompts")


class PipelineConfig(BaseModel):
    """SFT → RM → PPO into RUN_DIR/{sft,reward,ppo}. The pipeline fills each stage's
    model, output_dir and data from the fields here."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny"
    seed: int = Field(0, ge=0, lt=2**32, description="random seed (0 to 2**32 - 1)")
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="the same split for every stage")
    test_fraction: float = Field(0.1, ge=0, lt=1)
    compare_without_ptx: bool = Field(False, description="also train PPO with ptx_coef=0 into RUN_DIR/ppo-noptx")
    compare_methods: list[Literal["rloo", "dpo"]] = Field(
        default_factory=list, description="also train these on the same data, for the methods table of `rlhf eval "
        "overoptimization`: rloo into RUN_DIR/rloo (the ppo section with advantage=rloo, no ptx), dpo into "
        "RUN_DIR/dpo (the dpo section, from SFT on the comparisons)")
    chat_template: str | None = Field(
        None, description="chat template for every stage (text or file); default: the tokenizer's, else plain")
    data: DataPaths = Field(default_factory=DataPaths)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    judge: dict[str, Any] | None = Field(
        None, description="train a judge into RUN_DIR/judge: a reward model from the base model on comparisons the "
        "proxy reward model never saw (disjoint_from), which scores the held-out win rates; its fields (a reward "
        "section's) override the reward section's; {} = the reward section as it is")
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        from rlhf.data.collate import check_split_fractions

        check_split_fractions(self.valid_fraction, self.test_fraction)  # a DataError is a ValueError
        return self


STAGE_CONFIGS: dict[str, type[BaseModel]] = {
    "sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "dpo": DPOConfig, "pipeline": PipelineConfig,
}


def _set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["ppo.kl_coef=0.05", "sft.data=[a.jsonl]"]`` → nested dict; values parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as error:
            raise ConfigError(f"override '{item[:80]}': invalid YAML ({one_line(error)})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def preset_config_path(name: str) -> Path:
    path = resources.files("rlhf") / "configs" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.name.removesuffix(".yaml") for p in (resources.files("rlhf") / "configs").iterdir()
                           if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(available)}")
    return Path(str(path))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file (a config is a YAML file)")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or one_line(error)
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read as a YAML text file ({one_line(error)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return tree


def load_config(kind: str, files: list[str | Path] = (), overrides: list[str] = ()):
    """Build a validated config of ``kind`` from YAML files (later ones win) and ``key=value`` overrides."""
    tree: dict = {}
    for path in files:
        tree = deep_merge(tree, read_yaml(path))
    tree = deep_merge(tree, parse_overrides(list(overrides)))
    return build_config(STAGE_CONFIGS[kind], tree, kind)


def build_config(cls: type[BaseModel], tree: dict, where: str = "config"):
    try:
        return cls.model_validate(tree)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"]) or "(top level)"
            got = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
            problems.append(f"{field}: {item['msg']}{got}")
        raise ConfigError(f"invalid {where} config: " + "; ".join(problems)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
