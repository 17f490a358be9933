"""Experiment configuration: presets, merging order, errors a user can act on."""

import pytest

from vsml import config as cfg


@pytest.mark.parametrize("name", cfg.preset_names())
def test_every_preset_validates(name):
    """Each YAML preset in configs/ loads into a typed config."""
    loaded = cfg.load_config([name])
    assert loaded.name == name


def test_expected_presets_exist():
    """The seed's experiments and the CPU presets are all there."""
    wanted = {
        "quick",
        "cpu-30min",
        "default",
        "random-projection",
        "backprop",
        "deep",
        "conv",
        "backward-pass",
        "invariances",
        "few-shot",
    }
    assert wanted <= set(cfg.preset_names())


def test_overrides_win_over_files_over_defaults():
    """Defaults < files < --set overrides."""
    loaded = cfg.load_config(["quick"], ["optimizer.sigma=0.1"])
    assert loaded.optimizer.sigma == 0.1
    assert loaded.model.aggregation == "sum"  # from quick.yaml
    assert loaded.model.state_size == 16  # default


def test_unknown_key_names_the_closest_valid_one():
    """A typo is an error naming the key and a suggestion."""
    with pytest.raises(cfg.ConfigError, match="'model.mesage_size'.*'message_size'"):
        cfg.load_config(overrides=["model.mesage_size=4"])


def test_unknown_section_names_the_closest_valid_one():
    with pytest.raises(cfg.ConfigError, match="'optimiser'.*'optimizer'"):
        cfg.load_config(overrides=["optimiser.sigma=1"])


def test_bad_value_names_field_value_and_rule():
    """A value out of range names the field, the value and the constraint."""
    with pytest.raises(cfg.ConfigError, match="optimizer.sigma=-1.*greater than 0"):
        cfg.load_config(overrides=["optimizer.sigma=-1"])


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(cfg.ConfigError, match="aggregation='max'.*'mean' or 'sum'"):
        cfg.load_config(overrides=["model.aggregation=max"])


def test_few_shot_episode_must_fit_the_classes():
    """An episode shorter than the number of few-shot classes is refused."""
    with pytest.raises(cfg.ConfigError, match="shorter than training.few_shot_ways"):
        cfg.load_config(
            overrides=["training.few_shot_ways=5", "training.episode_length=3"]
        )


def test_few_shot_ways_cannot_exceed_classes():
    with pytest.raises(cfg.ConfigError, match="few_shot_ways=12 exceeds"):
        cfg.load_config(overrides=["training.few_shot_ways=12"])


def test_separate_backward_needs_backward_pass():
    with pytest.raises(cfg.ConfigError, match="needs model.backward_pass"):
        cfg.load_config(overrides=["model.separate_backward_rnn=true"])


def test_malformed_yaml_names_line_and_column(tmp_path):
    """Broken YAML is reported with its line and column."""
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  state_size: [1, 2\n")
    with pytest.raises(cfg.ConfigError, match="line 3, column 1"):
        cfg.load_config([str(path)])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(cfg.ConfigError, match="neither a file nor a preset.*quick"):
        cfg.load_config(["quik"])


def test_override_without_equals_is_refused():
    with pytest.raises(cfg.ConfigError, match="section.key=value"):
        cfg.parse_override("model.state_size")


def test_resolved_config_round_trips_through_yaml():
    """to_yaml output validates back into the same config."""
    loaded = cfg.load_config(["few-shot"])
    again = cfg.validate(cfg.read_yaml(cfg.to_yaml(loaded)))
    assert again == loaded


def test_yaml_alias_bomb_is_refused():
    """Anchors that expand to billions of values are refused, not expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # each level holds ten of the one before: 10**9 values
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(cfg.ConfigError, match="anchors and aliases"):
        cfg.read_yaml("\n".join(lines))


@pytest.mark.parametrize(
    "text", ["seed: " + "9" * 5000, "name: " + "[" * 5000 + "]" * 5000]
)
def test_unreadable_yaml_is_a_config_error(text):
    """Huge integers and deep nesting are config errors, not crashes."""
    with pytest.raises(cfg.ConfigError, match="cannot be read"):
        cfg.read_yaml(text)


def test_duplicate_yaml_key_is_refused_with_its_line():
    """A section written twice is an error pointing at the second one."""
    text = "training:\n  episode_length: 5\nmodel: {}\ntraining:\n  batch_size: 2\n"
    with pytest.raises(cfg.ConfigError, match="appears twice") as caught:
        cfg.validate_yaml(text)
    assert caught.value.problems[0].line == 4


@pytest.mark.parametrize(
    "override",
    ["model.num_micro_ticks=1000000000000", "model.state_size=100000",
     "training.episode_length=10000000000", "optimizer.population_size=100000"],
)  # fmt: skip
def test_absurd_sizes_are_refused_up_front(override):
    """Sizes no machine could run are config errors, not run-time crashes."""
    with pytest.raises(cfg.ConfigError):
        cfg.load_config(["quick"], [override])


@pytest.mark.parametrize(
    "override,message",
    [("distributed.world_size=true", "distributed.world_size=True: expected a "
      "number, not a boolean"),
     ("optimizer.sigma=no", "optimizer.sigma=False: expected a number"),
     ("distributed.timeout_minutes=1e308", "less than or equal to 10080"),
     ("training.time_limit_minutes=1e308", "less than or equal to 525600")],
)  # fmt: skip
def test_booleans_and_endless_durations_are_not_numbers(override, message):
    """YAML's `true` is not 1, and a wait longer than a week is a typo."""
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(["quick"], [override])


@pytest.mark.parametrize(
    "placement,message",
    [({"world_size": 3, "nodes": 2}, "do not split evenly"),
     ({"world_size": 2, "gpus": 1}, "one per GPU: set gpus to 0 \\(CPU\\) or 2"),
     ({"world_size": 4, "nodes": 2, "gpus": 4}, "set gpus to 0 \\(CPU\\) or 2")],
)  # fmt: skip
def test_processes_must_fit_hosts_and_gpus(placement, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.validate({"distributed": placement, "optimizer": {"population_size": 8}})


def test_gpus_and_a_cpu_device_contradict():
    with pytest.raises(cfg.ConfigError, match="training.device is 'cpu'"):
        cfg.validate({"distributed": {"gpus": 1}, "training": {"device": "cpu"}})
