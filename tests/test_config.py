"""TrainConfig and its flags: one flag per field, the field's default, and bad values refused by flag name."""

import dataclasses

import pytest

from common.errors import UserError
from model.config import TrainConfig, build_parser, flag_name, parse_args

REQUIRED = ["--train", "features/train", "--output", "models/run"]


def test_defaults_come_from_the_fields():
    config = parse_args(REQUIRED)
    assert config == TrainConfig(train=("features/train",), output="models/run")
    assert (config.epochs, config.patience, config.batch_size, config.learning_rate) == (200, 30, 32, 1e-3)
    assert (config.lr_patience, config.ema_momentum, config.start_from_epoch) == (10, 0.99, 60)
    assert (config.num_heads, config.seed, config.validation_split) == (8, 0, 0.15)
    assert (config.validation, config.test, config.resume, config.overwrite, config.cache) == ((), (), False,
                                                                                               False, "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_every_field_has_one_flag():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}
    # --no-cache is the deprecated alias of --cache none, left out of --help.
    assert flags == {flag_name(field) for field in dataclasses.fields(TrainConfig)} | {"--no-cache"}
    assert {"--cache", "--batch-size", "--start-from-epoch", "--num-heads"} <= flags
    assert "--feature-noise" not in flags
    help_text = parser.format_help()
    assert "(default: 200)" in help_text and "(default: 0.15)" in help_text and "--start-from-epoch N" in help_text
    assert "--cache {auto,memory,disk,none}" in help_text and "(default: auto)" in " ".join(help_text.split())
    assert "--no-cache" not in help_text


def test_flags_set_their_fields():
    config = parse_args(["--train", "a", "--train", "b/", "--test", "t", "--output", "gs://bucket/m",
                         "--epochs", "5", "--patience", "0", "--batch-size", "8", "--learning-rate", "0.01",
                         "--lr-patience", "0", "--ema-momentum", "0", "--start-from-epoch", "0", "--num-heads", "1",
                         "--seed", "3", "--resume", "--overwrite", "--cache", "disk"])
    assert config.train == ("a", "b/") and config.test == ("t",) and config.output == "gs://bucket/m"
    assert (config.epochs, config.patience, config.batch_size, config.learning_rate) == (5, 0, 8, 0.01)
    assert (config.lr_patience, config.ema_momentum, config.start_from_epoch, config.num_heads) == (0, 0.0, 0, 1)
    assert config.seed == 3 and config.resume and config.overwrite and config.cache == "disk"
    assert parse_args(REQUIRED + ["--validation", "v1", "--validation", "v2"]).validation == ("v1", "v2")


def test_no_cache_is_a_deprecated_alias_of_cache_none(caplog):
    assert parse_args(REQUIRED + ["--no-cache"]).cache == "none"
    assert "--no-cache is deprecated and will go: it means --cache none" in caplog.text
    assert TrainConfig(train=("a",), output="m", cache="memory").cache == "memory"
    with pytest.raises(UserError, match="^--cache must be one of auto, memory, disk, none, got 'ram'$"):
        TrainConfig(train=("a",), output="m", cache="ram")


def test_as_json_lists_the_patterns():
    settings = parse_args(REQUIRED + ["--test", "t"]).as_json()
    assert settings["train"] == ["features/train"] and settings["test"] == ["t"] and settings["validation"] == []
    assert set(settings) == {field.name for field in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--patience", "-1"], "--patience must be 0 (no early stopping) or more, got -1"),
    (["--lr-patience", "-1"], "--lr-patience must be 0 (constant learning rate) or more, got -1"),
    (["--ema-momentum", "1"], "--ema-momentum must be 0 (no averaging) or more and below 1, got 1.0"),
    (["--start-from-epoch", "-1"], "--start-from-epoch must be 0 (judge every epoch) or more, got -1"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--num-heads", "0"], "--num-heads must be at least 1, got 0"),
    (["--learning-rate", "0"], "--learning-rate must be positive, got 0.0"),
    (["--validation-split", "1.5"], "--validation-split must be between 0 and 1, got 1.5"),
])
def test_bad_values_name_their_flag(flags, message):
    with pytest.raises(UserError) as raised:
        parse_args(REQUIRED + flags)
    assert str(raised.value) == message


@pytest.mark.parametrize("argv", [
    ["--output", "m"],  # no --train
    REQUIRED + ["--validation", "v", "--validation-split", "0.2"],  # one or the other
    REQUIRED + ["--feature-noise", "0.2"],  # removed
    REQUIRED + ["--cache", "ram"],
])
def test_parser_refuses(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_validation_records_make_the_split_irrelevant():
    assert parse_args(REQUIRED + ["--validation", "v"]).validation_split == 0.15
    assert TrainConfig(train=("a",), output="m", validation=("v",), validation_split=0.0).validation == ("v",)
