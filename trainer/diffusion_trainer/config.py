"""Trainer configuration: torch-free pydantic models.

The operator imports these models: the sections here are the `model`, `data`, `training`,
`eval` and `checkpoint` sections of a DiffusionTrainingJob spec, and the operator renders a
complete `TrainerConfig` into the ConfigMap each worker reads. Keys are camelCase in YAML
(as in the job spec); snake_case names are accepted too. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel


class Section(BaseModel):
    """Base of every config section: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]


class EmaConfig(Section):
    """Exponential moving average of the U-Net weights, kept sharded like the model."""

    enabled: Annotated[bool, Field(description="false turns off an EMA that a preset enables.")] = (
        True
    )
    decay: Annotated[float, Field(gt=0.0, lt=1.0, description="EMA decay per optimizer step.")] = (
        0.9999
    )
    start_step: Annotated[int, Field(ge=0, description="First step that updates the EMA.")] = 0


class ModelConfig(Section):
    """The U-Net to train and the frozen encoders it needs."""

    unet: Annotated[
        str,
        Field(
            min_length=1,
            description="U-Net architecture shipped with the trainer: sd2-base or tiny.",
            json_schema_extra={"enum": ["sd2-base", "tiny"]},
        ),
    ] = "sd2-base"
    pretrained: Annotated[
        str | None,
        Field(description="Hugging Face id or local path of a diffusers model to start from."),
    ] = None
    vae: Annotated[
        str | None,
        Field(description="Hugging Face id or path of the VAE (needed for raw image data)."),
    ] = None
    text_encoder: Annotated[
        str | None,
        Field(description="Hugging Face id or path holding text_encoder/ and tokenizer/."),
    ] = None
    prediction_type: Annotated[
        Literal["epsilon", "v_prediction"], Field(description="What the U-Net predicts.")
    ] = "epsilon"
    zero_terminal_snr: Annotated[
        bool, Field(description="Rescale the noise schedule to zero terminal SNR.")
    ] = False
    offset_noise: Annotated[
        float, Field(ge=0.0, le=1.0, description="Offset-noise strength (0 disables).")
    ] = 0.0
    min_snr_gamma: Annotated[
        float | None, Field(gt=0.0, description="Min-SNR-gamma loss weighting (null disables).")
    ] = None
    ema: Annotated[
        EmaConfig | None, Field(description="EMA of the weights (null or enabled: false disables).")
    ] = None

    @property
    def vae_source(self) -> str | None:
        return self.vae or self.pretrained

    @property
    def text_encoder_source(self) -> str | None:
        return self.text_encoder or self.pretrained


ShuffleAlgo = Literal["py1e", "py1br", "py1b", "py1s", "py2s", "naive"]
ByteSize = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?\s*(b|kb|mb|gb|tb)$")]


class StreamConfig(Section):
    """One MDS dataset of a mixture."""

    remote: Annotated[str | None, Field(description="s3://, gs:// or path of the shards.")] = None
    local: Annotated[str, Field(min_length=1, description="This stream's own cache directory.")]
    proportion: Annotated[
        float | None,
        Field(gt=0.0, description="Relative share of each epoch (set on every stream or none)."),
    ] = None


class DatasetConfig(Section):
    """One MosaicML Streaming (MDS) dataset, or a mixture of several (`streams`)."""

    remote: Annotated[
        str | None,
        Field(description="s3://, gs:// or local path of the MDS shards (null: only `local`)."),
    ] = None
    local: Annotated[
        str, Field(min_length=1, description="Local cache directory (or the shards themselves).")
    ] = "/tmp/dtj-data"
    streams: Annotated[
        list[StreamConfig] | None,
        Field(min_length=1, description="A mixture of datasets by proportion; replaces remote."),
    ] = None
    precomputed_latents: Annotated[
        bool,
        Field(description="Shards hold VAE latents and text hidden states, not images/captions."),
    ] = True
    resolution: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 256
    caption_drop_prob: Annotated[
        Probability, Field(description="Probability of dropping a caption (CFG training).")
    ] = 0.1
    shuffle: bool = True
    num_workers: Annotated[int, Field(ge=0, le=64, description="DataLoader workers.")] = 4
    cache_limit: Annotated[
        ByteSize | None,
        Field(description="Evict downloaded shards beyond this (e.g. 100gb); remote data only."),
    ] = "100gb"
    predownload: Annotated[
        int | None, Field(ge=1, description="Samples to fetch ahead per worker (8 x batch).")
    ] = None
    download_retry: Annotated[int, Field(ge=0, le=20, description="Retries per shard.")] = 2
    download_timeout_seconds: Annotated[
        float, Field(gt=0.0, description="Timeout per shard download.")
    ] = 60.0
    num_canonical_nodes: Annotated[
        int | None,
        Field(
            ge=1,
            description="Streaming's canonical node count (e.g. 64): fixed, the sample order "
            "survives resizing the job; null: the first run's node count.",
        ),
    ] = None
    shuffle_algo: Annotated[ShuffleAlgo, Field(description="Streaming's shuffle algorithm.")] = (
        "py1e"
    )
    shuffle_block_size: Annotated[
        int | None, Field(ge=1, description="Shuffle block size (null: Streaming's default).")
    ] = None

    @model_validator(mode="after")
    def check_streams(self) -> DatasetConfig:
        if not self.streams:
            return self
        if self.remote is not None:
            raise ValueError("streams replaces remote: set one of them")
        with_proportion = [s.proportion is not None for s in self.streams]
        if any(with_proportion) and not all(with_proportion):
            raise ValueError("streams: set proportion on every stream or on none")
        if len({s.local for s in self.streams}) < len(self.streams):
            raise ValueError("streams: every stream needs its own local directory")
        return self

    def sources(self) -> list[StreamConfig]:
        """Where the shards are: the streams, or remote/local as one stream."""
        return self.streams or [StreamConfig(remote=self.remote, local=self.local)]


class SyntheticDataConfig(Section):
    """The synthetic shapes dataset (`dtj data synth`), written by the trainer when absent."""

    out: Annotated[
        str,
        Field(
            pattern=r"^/",
            description="Where it is written (raw/, encoders/, latents/); point data.train.local "
            "at <out>/latents and model.vae/textEncoder at <out>/encoders.",
        ),
    ] = "/tmp/dtj-synthetic"
    num_samples: Annotated[int, Field(ge=16, le=100_000, description="Image-caption pairs.")] = 128
    seed: Annotated[int, Field(ge=0)] = 0


# DatasetConfig fields that only shape training batches: evaluation reads its shards in order,
# in the main process, without caption dropout, at eval.resolution.
TRAIN_ONLY_DATASET_FIELDS = (
    "resolution",
    "caption_drop_prob",
    "shuffle",
    "shuffle_algo",
    "shuffle_block_size",
    "num_workers",
)


class DataConfig(Section):
    train: DatasetConfig = Field(default_factory=DatasetConfig)
    eval: DatasetConfig | None = None
    synthesize: Annotated[
        SyntheticDataConfig | None,
        Field(
            description="Write a small synthetic dataset with tiny encoders before training "
            "(each pod its own copy, local rank 0 writes): a job that needs no data staged."
        ),
    ] = None

    @model_validator(mode="after")
    def check_eval_takes_no_train_only_fields(self) -> DataConfig:
        """A value that would do nothing is refused, not ignored."""
        if self.eval is None:
            return self
        fields = DatasetConfig.model_fields
        ignored = [
            f"data.eval.{to_camel(name)}"
            for name in TRAIN_ONLY_DATASET_FIELDS
            if getattr(self.eval, name) != fields[name].default
        ]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)}: evaluation does not use this (it reads its shards in"
                " order, in the main process, without caption dropout, at eval.resolution);"
                " remove it, or set eval.resolution for the evaluation's image size"
            )
        return self


class TrainingConfig(Section):
    """Optimization recipe. The global batch is reached by gradient accumulation."""

    global_batch_size: Annotated[PositiveInt, Field(description="Images per optimizer step.")] = (
        2048
    )
    micro_batch_size: Annotated[
        PositiveInt, Field(description="Images per GPU per forward/backward pass.")
    ] = 16
    max_steps: Annotated[PositiveInt, Field(description="Optimizer steps to train.")] = 550_000
    lr: Annotated[float, Field(gt=0.0, le=1.0, description="Peak learning rate.")] = 1.0e-4
    warmup_steps: Annotated[int, Field(ge=0, description="Linear warmup steps.")] = 10_000
    lr_schedule: Annotated[
        Literal["constant", "cosine"], Field(description="Schedule after warmup.")
    ] = "constant"
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    betas: Annotated[tuple[float, float], Field(description="AdamW betas.")] = (0.9, 0.999)
    precision: Annotated[
        Literal["bf16", "fp32"], Field(description="Mixed precision for compute (bf16).")
    ] = "bf16"
    grad_clip_norm: Annotated[
        float | None, Field(gt=0.0, description="Clip gradients to this norm (null disables).")
    ] = 1.0
    compile: Annotated[bool, Field(description="torch.compile each sharding unit.")] = False
    compile_mode: Annotated[
        Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
        Field(
            description="torch.compile mode when compile is on: reduce-overhead adds CUDA graphs "
            "within each unit (FSDP2's collectives stay outside them)."
        ),
    ] = "default"
    sharding: Annotated[
        Literal["fsdp", "hsdp"],
        Field(
            description="fsdp shards the weights across every GPU; hsdp shards them within "
            "groups of hsdpShardSize GPUs (a node) and replicates across groups, so only a "
            "gradient all-reduce crosses nodes."
        ),
    ] = "fsdp"
    hsdp_shard_size: Annotated[
        PositiveInt | None,
        Field(
            description="GPUs per HSDP shard group (default: the GPUs of one node); must "
            "divide the world size."
        ),
    ] = None
    fsdp_units: Annotated[
        Literal["layers", "blocks"],
        Field(
            description="FSDP2 sharding (and compile) units: each ResNet and transformer layer "
            "(better overlap, lower peak memory) or each down/mid/up block."
        ),
    ] = "layers"
    reshard_after_forward: Annotated[
        bool,
        Field(
            description="Free gathered weights after every forward (least memory, weights "
            "gathered twice per micro-batch); false keeps them from the first forward to the "
            "last backward of a step: one all-gather per optimizer step."
        ),
    ] = False
    activation_checkpointing: bool = False
    channels_last: bool = True
    seed: Annotated[int, Field(ge=0)] = 17
    log_interval_steps: Annotated[PositiveInt, Field(description="Log every N steps.")] = 10

    @model_validator(mode="after")
    def check_dependent_fields(self) -> TrainingConfig:
        """Fields that only act with another one set are refused alone, not ignored."""
        if self.hsdp_shard_size is not None and self.sharding != "hsdp":
            raise ValueError("hsdpShardSize applies to sharding: hsdp only; set both or neither")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError("compileMode applies when compile is true; set compile: true")
        return self


EvalMetric = Literal["fid", "clip"]
EVAL_METRICS: tuple[EvalMetric, ...] = ("fid", "clip")
SamplerName = Literal["ddim", "dpm-solver"]
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


class EvalConfig(Section):
    """FID and CLIP score of generated images, per classifier-free guidance scale."""

    interval_steps: Annotated[
        int, Field(ge=0, description="Evaluate every N optimizer steps (0 disables).")
    ] = 0
    guidance_scales: Annotated[
        list[Annotated[float, Field(ge=1.0, le=30.0)]],
        Field(min_length=1, max_length=8, description="CFG scales; 1 is the plain conditional."),
    ] = Field(default_factory=lambda: [1.0, 3.0, 7.0])
    num_samples: Annotated[
        int, Field(ge=2, description="Images generated per guidance scale (FID needs >= 10,000).")
    ] = 30_000
    metrics: Annotated[list[EvalMetric], Field(min_length=1)] = Field(
        default_factory=lambda: list(EVAL_METRICS)
    )
    sampler: Annotated[SamplerName, Field(description="ddim or dpm-solver (DPM-Solver++ 2M).")] = (
        "ddim"
    )
    num_inference_steps: Annotated[int, Field(ge=1, le=1000, description="Denoising steps.")] = 50
    batch_size: Annotated[PositiveInt, Field(description="Images per GPU per sampling batch.")] = 16
    seed: Annotated[
        int, Field(ge=0, description="Sample i starts from noise seeded by (seed, i).")
    ] = 0
    use_ema: Annotated[bool, Field(description="Sample with the EMA weights when kept.")] = True
    resolution: Annotated[
        int | None,
        Field(
            ge=64,
            le=2048,
            multiple_of=8,
            description="Image size; default data.train's (the trained size).",
        ),
    ] = None
    fid_feature_extractor: Annotated[
        str | None,
        Field(
            description="FID features: a local Inception weights file "
            "(pt_inception-2015-12-05-6726825d.pth) or a `dtj data synth` feature folder; "
            "null: torch-fidelity's Inception, fetched once into the torch hub cache."
        ),
    ] = None
    clip_model: Annotated[
        str, Field(min_length=1, description="Hugging Face id or local folder of the CLIP model.")
    ] = DEFAULT_CLIP_MODEL
    num_grid_images: Annotated[
        int, Field(ge=0, le=64, description="Fixed eval prompts drawn per scale in the grid PNG.")
    ] = 8

    @property
    def enabled(self) -> bool:
        return self.interval_steps > 0


class CheckpointConfig(Section):
    """Sharded checkpoints, committed atomically under `uri`."""

    uri: Annotated[
        str, Field(min_length=1, description="Local/PVC path, s3:// or gs:// prefix.")
    ] = "/tmp/dtj-checkpoints"
    interval_steps: Annotated[PositiveInt, Field(description="Save every N steps.")] = 1000
    keep_last: Annotated[PositiveInt, Field(description="Committed checkpoints to keep.")] = 3
    resume_from: Annotated[
        str | None,
        Field(description="Checkpoint to resume from; default: latest committed under uri."),
    ] = None
    export_diffusers: Annotated[
        bool, Field(description="Export the final U-Net (and EMA) as a diffusers folder.")
    ] = True


class MetricsConfig(Section):
    """Prometheus metrics and the JSON progress endpoint served by node rank 0."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 9400
    enabled: bool = True


class RunInfo(Section):
    """Who this run is, for logs and metric labels (filled in by the operator)."""

    job_name: str = "local"
    namespace: str = "default"
    attempt: Annotated[int, Field(ge=1)] = 1


class TrainerConfig(Section):
    """Everything one training run needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    run: RunInfo = Field(default_factory=RunInfo)

    @model_validator(mode="after")
    def check_zero_terminal_snr_predicts_v(self) -> TrainerConfig:
        # With epsilon, the last timestep holds no signal: training learns nothing there and
        # a sampler that starts from it divides by sqrt(alpha_bar) = 0.
        if self.model.zero_terminal_snr and self.model.prediction_type != "v_prediction":
            raise ValueError(
                "model.zeroTerminalSnr needs model.predictionType: v_prediction; "
                "set predictionType or turn zeroTerminalSnr off"
            )
        return self

    @model_validator(mode="after")
    def check_eval_inputs(self) -> TrainerConfig:
        if not self.eval.enabled:
            return self
        problems = missing_eval_inputs(self)
        if problems:
            raise ValueError(
                "eval.intervalSteps > 0 needs "
                + "; ".join(problems)
                + ". Set them, or eval.intervalSteps: 0 to train without evaluation"
            )
        return self

    @model_validator(mode="after")
    def check_micro_batch_fits(self) -> TrainerConfig:
        if self.training.micro_batch_size > self.training.global_batch_size:
            raise ValueError(
                "training.microBatchSize must not exceed training.globalBatchSize; "
                "lower microBatchSize or raise globalBatchSize"
            )
        return self


def missing_eval_inputs(config: TrainerConfig) -> list[str]:
    """What evaluation needs and the config lacks, each with the field that supplies it."""
    model, eval_data = config.model, config.data.eval
    problems = []
    if eval_data is None:
        problems.append("data.eval (MDS shards of images or latents with captions)")
    if model.vae_source is None:
        problems.append("model.vae or model.pretrained (the VAE that decodes samples)")
    if eval_data is not None and eval_data.local == config.data.train.local:
        problems.append("data.eval.local different from data.train.local (one cache each)")
    raw_eval = eval_data is not None and not eval_data.precomputed_latents
    if raw_eval and model.text_encoder_source is None:
        problems.append("model.textEncoder or model.pretrained (raw eval captions are encoded)")
    return problems


def check_batch_divisible(training: TrainingConfig, world_size: int) -> int:
    """Gradient accumulation steps that reach the global batch at this world size."""
    per_step = training.micro_batch_size * world_size
    if training.global_batch_size % per_step:
        raise ValueError(
            f"training.globalBatchSize={training.global_batch_size} is not divisible by "
            f"microBatchSize x world size = {training.micro_batch_size} x {world_size}; "
            "choose a global batch size that is a multiple of it"
        )
    return training.global_batch_size // per_step


def resolve_hsdp_shard_size(training: TrainingConfig, world_size: int, per_node: int) -> int:
    """GPUs per HSDP shard group (`hsdpShardSize`, else a node's); it must divide the world."""
    shard_size = training.hsdp_shard_size or per_node
    if world_size % shard_size:
        raise ValueError(
            f"training.hsdpShardSize={shard_size} does not divide the world size {world_size}; "
            "set it to a divisor of the world size (usually the GPUs of one node)"
        )
    return shard_size


def check_world_layout(training: TrainingConfig, world_size: int, per_node: int) -> int:
    """Gradient accumulation steps at this world size; ValueError naming the field if the
    batch or the HSDP shard groups do not fit it."""
    num_accum = check_batch_divisible(training, world_size)
    if training.sharding == "hsdp":
        resolve_hsdp_shard_size(training, world_size, per_node)
    return num_accum


class ConfigError(ValueError):
    """A config file that cannot be used, with a message that names the field and the fix."""


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "invalid trainer config:\n" + "\n".join(lines)


def load_config(path: str | Path) -> TrainerConfig:
    """Read and validate a YAML trainer config; raise ConfigError with readable messages."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read trainer config {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"trainer config {path} is not valid YAML: {error}") from error
    try:
        return TrainerConfig.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from error


def dump_config(config: TrainerConfig) -> str:
    """YAML with camelCase keys, as the operator writes it into the ConfigMap."""
    return yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
