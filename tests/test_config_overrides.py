"""lddetr-train --config_overrides: typed model config fields over the preset's, and one-line errors."""

import pytest

from training_scripts.train import parse_config_overrides


def test_overrides_are_typed_as_the_config_fields():
    overrides = parse_config_overrides("hidden_dropout=0, num_decoder_loops=1,official_highlight_slicing=true")
    assert overrides == {"hidden_dropout": 0.0, "num_decoder_loops": 1, "official_highlight_slicing": True}
    assert isinstance(overrides["hidden_dropout"], float) and isinstance(overrides["num_decoder_loops"], int)
    assert parse_config_overrides(None) == {} and parse_config_overrides("") == {}


@pytest.mark.parametrize(
    "text, words",
    [
        ("no_such_field=1", ["no_such_field", "LDDetrConfig field"]),
        ("hidden_dropout", ["name=value"]),
        ("num_queries=ten", ["'ten'", "int"]),
    ],
)
def test_a_bad_override_is_one_line_naming_it(text, words):
    with pytest.raises(SystemExit) as error:
        parse_config_overrides(text)
    message = str(error.value)
    assert message.startswith("lddetr-train: error: --config_overrides") and "\n" not in message
    for word in words:
        assert word in message, message
