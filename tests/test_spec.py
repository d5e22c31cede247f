import json

import pytest

from hamedge.errors import SpecError
from hamedge.spec import NIH_CLASSES, ModelSpec


def test_defaults_are_the_reference_nih_setup():
    spec = ModelSpec()
    assert spec.class_names == NIH_CLASSES and spec.num_classes == 14
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.thresholds == (0.5,) * 14


@pytest.mark.parametrize(
    "pool, stride, dilation, strides, dilations",
    [
        (True, 8, True, (1, 2, 1, 1), (1, 1, 2, 4)),  # the localisation configs
        (True, 32, False, (1, 2, 2, 2), (1, 1, 1, 1)),
        (True, 16, True, (1, 2, 2, 1), (1, 1, 1, 2)),
        (False, 8, True, (1, 2, 2, 1), (1, 2, 4, 6)),
        (False, 16, False, (1, 2, 2, 2), (1, 1, 1, 1)),
    ],
)
def test_stage_layout_follows_reference_table(pool, stride, dilation, strides, dilations):
    spec = ModelSpec(arch="resnet50", output_stride=stride, keep_maxpool=pool, dilation=dilation)
    assert spec.stage_strides == strides
    assert spec.stage_dilations == dilations


@pytest.mark.parametrize("size, stride, expected", [(512, 8, 64), (512, 32, 16), (256, 16, 16), (224, 32, 7)])
def test_feature_size(size, stride, expected):
    assert ModelSpec(input_size=size, output_stride=stride).feature_size == expected


def test_json_round_trip_preserves_everything():
    spec = ModelSpec(arch="resnet34", output_stride=16, input_size=320, class_names=("A", "B"),
                     class_thresholds=(0.3, 0.7), description="x")
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(spec.to_json())["format_version"] == 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "vgg16"}, "unknown architecture"),
        ({"output_stride": 4}, "output stride"),
        ({"class_names": ("A", "A")}, "unique"),
        ({"class_names": ()}, "at least one class"),
        ({"class_thresholds": (0.5,)}, "class_thresholds"),
        ({"mean": (0.5,)}, "mean and std"),
    ],
)
def test_invalid_specs_raise_one_line_errors(changes, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(**changes)


def test_unknown_and_future_fields_are_refused():
    data = ModelSpec().to_dict()
    with pytest.raises(SpecError, match="unknown spec field"):
        ModelSpec.from_dict({**data, "bogus": 1})
    with pytest.raises(SpecError, match="newer"):
        ModelSpec.from_dict({**data, "format_version": 99})
    with pytest.raises(SpecError, match="not valid JSON"):
        ModelSpec.from_json("{")


def test_binary_level_matches_sigmoid_threshold():
    import math

    spec = ModelSpec()
    level = spec.cam_binary_level
    value = 1.0 / (1.0 + math.exp(-spec.cam_gain * (level - spec.cam_center)))
    assert value == pytest.approx(spec.cam_threshold, abs=1e-9)
    assert 0.46 < level < 0.48  # the paper's "about normalised >= 0.47"


def test_grayscale_foldable_only_with_equal_channel_normalisation():
    assert ModelSpec().grayscale_foldable
    assert not ModelSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).grayscale_foldable


@pytest.mark.parametrize("changes", [{"mean": 5}, {"format_version": "x"}, {"class_names": "AB"},
                                     {"input_size": "big"}])
def test_malformed_values_are_spec_errors_not_tracebacks(changes):
    with pytest.raises(SpecError):
        ModelSpec.from_dict({**ModelSpec().to_dict(), **changes})
