"""Typed experiment configuration: defaults < YAML files < `key=value` overrides.

Every field has a short comment. An unknown key is an error that names the key
and the closest valid one; a bad value names the field, the value and what is
allowed; settings that do not fit together are errors too (`ConfigError`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, located for editors and APIs."""

    message: str
    loc: tuple[str | int, ...] = ()  # path of keys, e.g. ("training", "seed")
    suggestion: str | None = None  # closest valid key, for unknown keys
    line: int | None = None  # 1-based position in the YAML text, when known
    column: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "loc": ".".join(str(p) for p in self.loc),
            "message": self.message,
            "suggestion": self.suggestion,
            "line": self.line,
            "column": self.column,
        }


ImageSide = Annotated[int, Field(ge=1, le=4096)]
MAX_STATE_VALUES = 10**10  # 40 GB of float32 learner state: refuse beyond


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message a user can act on.

    `problems` lists each fault separately (with the YAML line where known);
    the message joins them into one sentence for the command line.
    """

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [Problem(message)]


class _Section(BaseModel):
    # inf and nan pass `gt=0` checks but ruin training: refuse them everywhere.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic would read `true` as 1 for a number; YAML makes that easy
        # to write by mistake (world_size: yes).
        field = cls.model_fields[info.field_name or ""]
        numeric = field.annotation in (int, float, int | None, float | None)
        if isinstance(value, bool) and numeric:
            raise PydanticCustomError("bool_number", "expected a number, not a boolean")
        return value


class ConvLayerConfig(_Section):
    # output channels (sub-RNNs per kernel entry)
    channels: int = Field(8, ge=1, le=4096)
    kernel_size: int = Field(3, ge=1, le=64)  # square kernel, SAME padding
    stride: int = Field(1, ge=1, le=64)


class ModelConfig(_Section):
    hidden_layers: list[int] = []  # dense hidden sizes; [] is one input->output layer
    conv_layers: list[ConvLayerConfig] = []  # conv VSML layers before the dense ones
    # M: channels of forward/backward messages
    message_size: int = Field(8, ge=2, le=1024)
    # S: hidden (and cell) size of each sub-LSTM
    state_size: int = Field(16, ge=2, le=4096)
    num_micro_ticks: int = Field(2, ge=1, le=64)  # K: LSTM updates per layer update
    output_index: int = Field(1, ge=0)  # forward-message channel read as the logit
    output_bound: float = Field(100.0, gt=0)  # logits bounded as b * tanh(x / b)
    feed_label: bool = True  # previous one-hot label in backward channel 1
    backward_pass: bool = False  # tick last-to-first again after the error
    separate_backward_rnn: bool = False  # own sub-RNN for the backward pass
    layerwise_rnns: bool = False  # one sub-RNN per layer instead of one for all
    layer_norm: bool = False  # layer norm on the forward/backward read-outs
    init_rand_proportion: float = Field(0.5, ge=0, le=1)  # random part of c at t=0
    aggregation: Literal["mean", "sum"] = "mean"  # how messages are pooled

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.output_index >= self.message_size:
            raise ValueError(
                f"model.output_index={self.output_index} must be below "
                f"model.message_size={self.message_size}"
            )
        if self.separate_backward_rnn and not self.backward_pass:
            raise ValueError(
                "model.separate_backward_rnn needs model.backward_pass: true"
            )
        if any(not 1 <= h <= 100_000 for h in self.hidden_layers):
            raise ValueError(
                f"model.hidden_layers={self.hidden_layers}: every size must be "
                "between 1 and 100000"
            )
        return self


class DatasetConfig(_Section):
    name: str = "mnist"  # mnist, fashion_mnist, digits, random, sum, or an IDX dir
    random_projection: bool = False  # fixed random projection of the input
    permute_pixels: bool = False  # fixed random pixel permutation
    classes: list[int] | None = None  # keep only these classes (relabelled 0..)
    projection_seed: int = 0  # seed of the projection and permutation


class DataConfig(_Section):
    # meta-training datasets
    train: list[DatasetConfig] = Field([DatasetConfig()], min_length=1)
    image_size: tuple[ImageSide, ImageSide] = (28, 28)  # inputs resized to this
    channels: int = Field(1, ge=1, le=64)  # inputs padded to this many channels
    num_classes: int = Field(10, ge=2, le=100_000)  # class count padded to this
    data_dir: str | None = None  # IDX files; default $VSML_DATA_DIR or ./data


class TrainingConfig(_Section):
    # steps per meta-training episode
    episode_length: int = Field(100, ge=1, le=1_000_000)
    # examples per step (states merged if > 1)
    batch_size: int = Field(1, ge=1, le=100_000)
    meta_loss: Literal["mean", "last"] = "mean"  # whole episode or last prediction
    num_iterations: int = Field(1000, ge=0, le=10**9)  # meta-iterations
    # stop early after this (at most a year)
    time_limit_minutes: float | None = Field(None, gt=0, le=525_600)
    # classes per few-shot episode
    few_shot_ways: int | None = Field(None, ge=2, le=100_000)
    log_every: int = Field(10, ge=1)  # metrics every N iterations
    checkpoint_every: int = Field(100, ge=1)  # checkpoint every N iterations
    # ES members or backprop trajectories run at once; 0: all, except backprop
    # on a CPU: one at a time (a fraction of the memory, as fast when idle)
    member_chunk: int = Field(0, ge=0, le=1_000_000)
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1"


class OptimizerConfig(_Section):
    type: Literal["es", "backprop"] = "es"
    # ES: antithetic pairs; BP: trajectories
    population_size: int = Field(16, ge=1, le=1_000_000)
    sigma: float = Field(0.05, gt=0)  # ES noise scale
    fitness_shaping: Literal["none", "centered_ranks"] = "none"  # ES loss transform
    learning_rate: float = Field(0.025, gt=0)  # Adam step size (initial one)
    # step size over the run: constant, or cosine decay over num_iterations
    learning_rate_schedule: Literal["constant", "cosine"] = "constant"
    # cosine: the last step size as a fraction of learning_rate
    final_learning_rate_fraction: float = Field(0.1, ge=0, le=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    clip_norm: float | None = Field(None, gt=0)  # global-norm clip of the update
    # BP: steps between saved states
    checkpoint_segment: int = Field(10, ge=1, le=1_000_000)


class EvaluationConfig(_Section):
    datasets: list[DatasetConfig] = Field(
        [DatasetConfig(name="mnist"), DatasetConfig(name="fashion_mnist")],
        min_length=1,
    )  # meta-test datasets (test split)
    every: int = Field(100, ge=1)  # meta-test every N iterations (and at the end)
    num_episodes: int = Field(4, ge=1, le=100_000)  # fresh test episodes per dataset
    # inner steps per test episode
    episode_length: int = Field(2000, ge=1, le=1_000_000)
    batch_size: int = Field(1, ge=1, le=100_000)
    baselines: list[Literal["sgd", "adam"]] = ["sgd", "adam"]  # online MLPs
    sgd_learning_rate: float = Field(0.03, gt=0)  # best of 0.003-0.1 on MNIST
    adam_learning_rate: float = Field(0.001, gt=0)
    # hidden units of the baseline MLP
    baseline_hidden: int = Field(128, ge=1, le=100_000)


class RankDataConfig(_Section):
    """Training data of a group of processes (the seed's mixture experiments)."""

    train: list[DatasetConfig] = Field(min_length=1)  # datasets of these ranks
    repeat: int = Field(1, ge=1)  # how many consecutive ranks use them


class DistributedConfig(_Section):
    world_size: int = Field(1, ge=1, le=1024)  # processes of one run
    # Per-rank training data, in rank order; repeats must add up to world_size.
    # Empty: every rank meta-trains on data.train.
    rank_data: list[RankDataConfig] = []
    # a collective (or hosts joining) waiting longer fails; at most a week
    timeout_minutes: float = Field(30, gt=0, le=10_080)
    # Hosts the processes are spread over (world_size / nodes on each); a
    # service run takes one worker per host.
    nodes: int = Field(1, ge=1, le=1024)
    # GPUs each host gives the run, one per process; 0: a CPU run. The
    # service sends the run to a queue that only workers with them serve.
    gpus: int = Field(0, ge=0, le=1024)

    @property
    def processes_per_node(self) -> int:
        return self.world_size // self.nodes


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # drives every random draw of a run
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        self._check_distributed()
        self._check_size()
        ways = self.training.few_shot_ways
        if ways is not None:
            if ways > self.data.num_classes:
                raise ValueError(
                    f"training.few_shot_ways={ways} exceeds "
                    f"data.num_classes={self.data.num_classes}"
                )
            if self.training.episode_length < ways:
                raise ValueError(
                    f"training.episode_length={self.training.episode_length} is "
                    f"shorter than training.few_shot_ways={ways}: every class must "
                    "appear at least once"
                )
        if self.model.output_index >= self.model.message_size:
            raise ValueError("model.output_index must be below model.message_size")
        return self

    def _check_size(self) -> None:
        """Refuse dense learners whose states could never fit in memory."""
        if self.model.conv_layers:
            return  # conv output sizes need the network; checked when built
        height, width = self.data.image_size
        sizes = [height * width * self.data.channels, *self.model.hidden_layers,
                 self.data.num_classes]  # fmt: skip
        cells = sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
        members = self.optimizer.population_size * (
            2 if self.optimizer.type == "es" else 1
        )
        values = cells * self.model.state_size * 2 * members * self.training.batch_size
        if values > MAX_STATE_VALUES:
            raise ValueError(
                f"the learner's states would hold {values:.3g} numbers "
                f"({4 * values / 1e9:.0f} GB; at most {MAX_STATE_VALUES:.0e}): "
                "shrink data.image_size, model.hidden_layers, model.state_size, "
                "optimizer.population_size or training.batch_size"
            )

    def _check_distributed(self) -> None:
        dist = self.distributed
        repeats = sum(r.repeat for r in dist.rank_data)
        if dist.rank_data and repeats != dist.world_size:
            raise ValueError(
                f"distributed.rank_data repeats add up to {repeats} ranks but "
                f"distributed.world_size={dist.world_size}: make them equal"
            )
        if self.optimizer.population_size < dist.world_size:
            unit = "pairs" if self.optimizer.type == "es" else "trajectories"
            raise ValueError(
                f"optimizer.population_size={self.optimizer.population_size} "
                f"{unit} cannot be spread over distributed.world_size="
                f"{dist.world_size} processes: each needs at least one"
            )
        self._check_placement()

    def _check_placement(self) -> None:
        dist = self.distributed
        if dist.world_size % dist.nodes:
            raise ValueError(
                f"distributed.world_size={dist.world_size} processes do not "
                f"split evenly over distributed.nodes={dist.nodes} hosts"
            )
        per_node = dist.processes_per_node
        if dist.gpus not in (0, per_node):
            raise ValueError(
                f"distributed.gpus={dist.gpus} but each host runs {per_node} "
                f"process(es), one per GPU: set gpus to 0 (CPU) or {per_node}"
            )
        if dist.gpus and self.training.device == "cpu":
            raise ValueError(
                f"distributed.gpus={dist.gpus} asks for GPUs but "
                "training.device is 'cpu': set training.device to 'auto' or "
                "'cuda', or distributed.gpus to 0"
            )

    def train_datasets(self, rank: int) -> list[DatasetConfig]:
        """The training datasets of process `rank`."""
        first = 0
        for group in self.distributed.rank_data:
            if rank < first + group.repeat:
                return group.train
            first += group.repeat
        return self.data.train


# --- loading, merging and error messages -----------------------------------

CONFIG_DIR = Path(
    os.environ.get("VSML_CONFIG_DIR", Path(__file__).parent.parent / "configs")
)


def preset_names() -> list[str]:
    """Names of the YAML presets in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (`quick`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(
        f"config {name_or_path!r} is neither a file nor a preset; presets: "
        + ", ".join(preset_names())
    )


MAX_CONFIG_VALUES = 100_000  # far more than any config; bounds YAML aliases


def read_yaml(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse YAML into a mapping; errors name the line and column.

    Refuses documents whose anchors and aliases expand to more than
    MAX_CONFIG_VALUES values (a kilobyte can stand for billions) and turns
    what Python refuses (4,300-digit integers, nesting deeper than the
    stack) into a ConfigError.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source}: expands to more than {MAX_CONFIG_VALUES} values "
                "through YAML anchors and aliases"
            )
        if root is not None:
            _refuse_duplicate_keys(root, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        message = f"{source}: malformed YAML{where}: {problem}"
        located = Problem(
            message,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        )
        raise ConfigError(message, [located]) from err
    except ConfigError:
        raise
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{source}: cannot be read: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return data


def _refuse_duplicate_keys(root: yaml.Node, source: str) -> None:
    """A key written twice in one mapping is an error (YAML would keep the
    last silently, so half of what the user wrote would be ignored)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in keys:
                    mark = key.start_mark
                    message = (
                        f"{source}: key {key.value!r} appears twice in one "
                        f"mapping (again at line {mark.line + 1}); merge them"
                    )
                    problem = Problem(message, line=mark.line + 1,
                                      column=mark.column + 1)  # fmt: skip
                    raise ConfigError(message, [problem])
                keys.add(getattr(key, "value", ""))
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _expanded_size(root: yaml.Node) -> int:
    """How many values a YAML node tree stands for once aliases are expanded
    (counting stops a little past MAX_CONFIG_VALUES)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = MAX_CONFIG_VALUES + 1  # an alias to itself: endless
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[id(node)] = total
        return total

    return size(root)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base` (mappings merge, rest wins)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """`training.episode_length=50` -> {"training": {"episode_length": 50}}."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    value = read_yaml(f"v: {raw}", source=f"override {text!r}")["v"] if raw else None
    nested: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested


def _closest(key: str, model: type[BaseModel]) -> str:
    match = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.0)
    return match[0] if match else ""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model that holds the field at `loc` (for suggestions)."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for cand in candidates:
            inner = [cand, *getattr(cand, "__args__", ())]
            found = [
                c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)
            ]
            if found:
                model = found[0]
                break
    return model


def _describe(error: dict[str, Any]) -> Problem:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "config"
    if error["type"] == "extra_forbidden":
        hint = _closest(str(loc[-1]), _model_at(loc)) or None
        text = f"unknown key {where!r}" + (f"; did you mean {hint!r}?" if hint else "")
        return Problem(text, loc, suggestion=hint)
    if error["type"] == "value_error":
        return Problem(str(error["msg"]).removeprefix("Value error, "), loc)
    shown = repr(error.get("input"))
    if len(shown) > 80:  # a huge value would drown the message
        shown = shown[:77] + "..."
    return Problem(f"{where}={shown}: {error['msg']}", loc)


def validate(data: dict[str, Any]) -> ExperimentConfig:
    """Build a typed config; raises ConfigError naming every problem."""
    try:
        return ExperimentConfig.model_validate(data)
    except RecursionError:
        raise ConfigError("the config is nested too deeply to read") from None
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        raise ConfigError("; ".join(p.message for p in problems), problems) from None


def validate_yaml(text: str) -> ExperimentConfig:
    """Validate a YAML document; each problem carries its line in `text`."""
    data = read_yaml(text, source="config")
    try:
        return validate(data)
    except ConfigError as err:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        located = [_locate(root, p) for p in err.problems]
        raise ConfigError(str(err), located) from None


def _locate(node: yaml.Node | None, problem: Problem) -> Problem:
    """Fill in the line and column of the key at `problem.loc` in the YAML."""
    if problem.line is not None or not problem.loc:
        return problem
    mark = None
    for part in problem.loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == str(part)]
            if not found:
                break
            mark, node = found[0][0].start_mark, found[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    if mark is None:
        return problem
    return replace(problem, line=mark.line + 1, column=mark.column + 1)


def load_config(
    paths: list[str] | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Defaults, then each YAML file (preset name or path), then overrides."""
    data: dict[str, Any] = {}
    for name in paths or []:
        path = resolve_config_path(name)
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"{path}: not a YAML text file ({err})") from err
        data = deep_merge(data, read_yaml(text, source=str(path)))
    for text in overrides or []:
        data = deep_merge(data, parse_override(text))
    return validate(data)


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML (round-trips through `validate`)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
