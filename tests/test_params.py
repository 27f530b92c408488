"""Parameter declarations, conversion, the precedence chain and ``Params``."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

import pystematic as ps
from pystematic.errors import ParameterError
from pystematic.params import (
    BUILTIN_NAMES,
    BUILTIN_PARAMETERS,
    Layer,
    Params,
    Source,
    convert,
    parameter,
    resolve,
)


def pair(text: str) -> tuple[int, int]:
    a, b = text.split("x")
    return int(a), int(b)


# ---------------------------------------------------------------- declarations


def test_parameter_record() -> None:
    p = parameter("batch-size", type=int, default=4, help="h", choices=[4, 8], envvar="BS")
    assert p.name == "batch_size"
    assert p.option == "--batch-size"
    assert p.type_name == "int"
    assert p.choices == (4, 8)
    assert p.envvar == "BS"
    assert not p.is_flag and not p.is_custom and not p.builtin


def test_bool_is_a_flag_defaulting_to_false() -> None:
    p = parameter("augment", type=bool)
    assert p.is_flag and p.default is False
    assert not parameter("flags", type=bool, multiple=True).is_flag


def test_type_names() -> None:
    assert parameter("p", type=Path).type_name == "path"
    assert parameter("s").type_name == "str"
    custom = parameter("size", type=pair)
    assert custom.type_name == "pair" and custom.is_custom


def test_invalid_name() -> None:
    with pytest.raises(ParameterError, match="1abc"):
        parameter("1abc")


def test_decorator_order_does_not_matter_and_source_order_is_kept() -> None:
    @ps.parameter("first", type=int, default=1)
    @ps.experiment
    @ps.parameter("second", type=int, default=2)
    @ps.parameter("third", type=int, default=3)
    def train(params: Any, context: Any) -> None:
        """Train it.

        Longer text."""

    assert isinstance(train, ps.Experiment)
    assert [p.name for p in train.parameters] == ["first", "second", "third"]
    assert train.description == "Train it."
    assert train.id == "train"
    names = [p.name for p in train.all_parameters]
    assert names[:3] == ["first", "second", "third"]
    assert set(names[3:]) == set(BUILTIN_NAMES)


def test_experiment_arguments() -> None:
    @ps.experiment(name="fit-it", help="Fit it.\n\nMore.", defaults={"epochs": 7})
    @ps.parameter("epochs", type=int, default=1)
    def main(params: Any, context: Any) -> int:
        """Not this."""
        return 3

    assert main.name == "fit_it" and main.id == "fit_it"
    assert main.description == "Fit it."
    assert main.defaults == {"epochs": 7}
    assert main.main(None, None) == 3  # the undecorated function stays reachable


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_builtin_name_clash_names_the_parameter(name: str) -> None:
    with pytest.raises(ParameterError, match=name):

        @ps.parameter(name, type=int)
        @ps.experiment
        def exp(params: Any, context: Any) -> None:
            pass

    with pytest.raises(ParameterError, match=name):

        @ps.experiment
        @ps.parameter(name, type=int)
        def exp2(params: Any, context: Any) -> None:
            pass


def test_duplicate_parameter() -> None:
    with pytest.raises(ParameterError, match="lr"):

        @ps.parameter("lr", type=float)
        @ps.parameter("lr", type=float)
        @ps.experiment
        def exp(params: Any, context: Any) -> None:
            pass


def test_param_group_shared_by_two_experiments() -> None:
    data = ps.param_group(
        "data",
        ps.parameter("batch_size", type=int, default=8),
        ps.parameter("workers", type=int, default=0),
    )

    @ps.parameter("lr", type=float, default=0.1)
    @data
    @ps.experiment
    def a(params: Any, context: Any) -> None:
        pass

    @data
    @ps.experiment
    def b(params: Any, context: Any) -> None:
        pass

    assert [(p.name, p.group) for p in a.parameters] == [
        ("lr", None),
        ("batch_size", "data"),
        ("workers", "data"),
    ]
    assert [p.name for p in b.parameters] == ["batch_size", "workers"]
    assert all(p.group == "data" for p in b.parameters)
    with pytest.raises(ParameterError):
        ps.param_group("bad", "not a parameter")  # type: ignore[arg-type]


def test_group_parameters_are_inherited() -> None:
    @ps.parameter("image_size", type=int, default=32)
    @ps.group
    def vision() -> None:
        """Vision experiments."""

    @ps.parameter("lr", type=float, default=0.1)
    @vision.experiment
    def fit(params: Any, context: Any) -> None:
        """Fit."""

    assert isinstance(vision, ps.Group)
    assert vision.help == "Vision experiments."
    assert fit.id == "vision.fit" and fit.name == "fit"
    assert [p.name for p in fit.parameters] == ["image_size", "lr"]
    with pytest.raises(ParameterError, match="image_size"):

        @ps.parameter("image_size", type=int)
        @vision.experiment
        def clash(params: Any, context: Any) -> None:
            pass


def test_experiment_applied_twice() -> None:
    @ps.experiment
    def once(params: Any, context: Any) -> None:
        pass

    with pytest.raises(ParameterError):
        ps.experiment(once)


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize(
    ("type_", "raw", "expected"),
    [
        (int, "5", 5),
        (int, 5, 5),
        (int, 5.0, 5),
        (float, "0.01", 0.01),
        (float, 2, 2.0),
        (str, "abc", "abc"),
        (str, 3, "3"),
        (bool, "true", True),
        (bool, "no", False),
        (bool, False, False),
        (Path, "a/b", Path("a/b")),
        (pair, "2x3", (2, 3)),
    ],
)
def test_convert(type_: Any, raw: Any, expected: Any) -> None:
    value = convert(parameter("p", type=type_), raw, "cli")
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("type_", "raw", "expected"),
    [
        (int, "abc", "an integer"),
        (int, 1.5, "an integer"),
        (int, True, "an integer"),
        (float, "x", "a float"),
        (bool, "maybe", "a boolean"),
        (str, [1], "a string"),
        (Path, 3, "a path"),
        (pair, "2-3", "pair"),
    ],
)
def test_convert_errors_name_parameter_value_and_expectation(
    type_: Any, raw: Any, expected: str
) -> None:
    with pytest.raises(ParameterError) as info:
        convert(parameter("my_param", type=type_), raw, "params-file")
    message = info.value.message
    assert "--my-param" in message
    assert str(raw) in message
    assert expected in message
    assert "params-file" in message
    assert "\n" not in message


def test_choices() -> None:
    p = parameter("optimizer", choices=["adam", "sgd"])
    assert convert(p, "sgd", "cli") == "sgd"
    with pytest.raises(ParameterError, match=r"--optimizer: 'rmsprop' is not one of adam, sgd"):
        convert(p, "rmsprop", "cli")
    ints = parameter("n", type=int, choices=[1, 2])
    assert convert(ints, "2", "cli") == 2  # choices compare the converted value


def test_multiple() -> None:
    p = parameter("layer", type=int, multiple=True)
    assert convert(p, ["1", "2"], "cli") == [1, 2]
    assert convert(p, "3,4 5", "env:LAYERS") == [3, 4, 5]
    with pytest.raises(ParameterError, match="--layer: 'x'"):
        convert(p, ["1", "x"], "cli")


# ---------------------------------------------------------------- precedence


DECLARED = [
    parameter("a", type=int, default=0),
    parameter("b", type=int, default=0),
    parameter("c", type=int, default=0),
    parameter("d", type=int, default=0),
    parameter("e", type=int, default=0, envvar="E_VAR"),
    parameter("f", type=int, default=0, envvar="F_VAR"),
    parameter("g", type=int, default=0, envvar="G_VAR"),
    parameter("h", type=int, default=0),
]


def layers(**extra: dict[str, Any]) -> list[Layer]:
    return [
        Layer(Source.CLI, "cli", {"g": "7", **extra.get("cli", {})}, strict=True),
        Layer(Source.PARAMS_FILE, "params-file", {"f": 6, "g": 66}, strict=True),
        Layer(Source.EXPERIMENT, "experiment", {"b": 2, "c": 22, "d": 22}, strict=True),
        Layer(Source.DEFAULTS, "[defaults]", {"c": 3, "d": 33, "zzz": 1}, strict=False),
        Layer(Source.EXPERIMENTS_TABLE, "[experiments.t]", {"d": 4, "e": 44}, strict=True),
    ]


def test_precedence_chain_and_sources() -> None:
    environ = {"E_VAR": "5", "F_VAR": "55", "G_VAR": "555"}
    resolved = resolve(DECLARED, layers(), environ=environ)
    assert resolved.values == {"a": 0, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 0}
    assert resolved.sources == {
        "a": "decorator",
        "b": "experiment",
        "c": "[defaults]",
        "d": "[experiments.t]",
        "e": "env:E_VAR",
        "f": "params-file",
        "g": "cli",
        "h": "decorator",
    }
    # Unknown [defaults] keys are ignored; without the env var the table wins.
    resolved = resolve(DECLARED, layers(), environ={})
    assert resolved.values["e"] == 44 and resolved.sources["e"] == "[experiments.t]"


@pytest.mark.parametrize("label", ["cli", "params-file", "experiment", "[experiments.t]"])
def test_unknown_keys_in_strict_layers(label: str) -> None:
    source = {
        "cli": Source.CLI,
        "params-file": Source.PARAMS_FILE,
        "experiment": Source.EXPERIMENT,
        "[experiments.t]": Source.EXPERIMENTS_TABLE,
    }[label]
    with pytest.raises(ParameterError) as info:
        resolve(DECLARED, [Layer(source, label, {"bogus": 1}, strict=True)], environ={})
    assert "'bogus'" in info.value.message and label in info.value.message


def test_kebab_keys_in_files_are_accepted() -> None:
    resolved = resolve(
        [parameter("batch_size", type=int, default=1)],
        [Layer(Source.PARAMS_FILE, "params-file", {"batch-size": 9}, strict=True)],
        environ={},
    )
    assert resolved.values == {"batch_size": 9}


def test_bad_value_from_a_lower_layer_names_its_source() -> None:
    with pytest.raises(ParameterError, match=r"--b: 'x' is not an integer \(from \[defaults\]\)"):
        resolve(DECLARED, [Layer(Source.DEFAULTS, "[defaults]", {"b": "x"}, False)], environ={})


def test_required() -> None:
    declared = [parameter("label", required=True)]
    with pytest.raises(ParameterError, match="--label"):
        resolve(declared, [], environ={})
    ok = resolve(declared, [Layer(Source.CLI, "cli", {"label": "x"}, True)], environ={})
    assert ok.values == {"label": "x"}


def test_env_values_are_parsed_like_cli_strings() -> None:
    declared = [
        parameter("flag", type=bool, envvar="FLAG"),
        parameter("layers", type=int, multiple=True, envvar="LAYERS"),
    ]
    resolved = resolve(declared, [], environ={"FLAG": "yes", "LAYERS": "1,2"})
    assert resolved.values == {"flag": True, "layers": [1, 2]}
    assert resolved.sources == {"flag": "env:FLAG", "layers": "env:LAYERS"}


def test_snapshot() -> None:
    declared = [
        parameter("size", type=pair, default="2x3"),
        parameter("data", type=Path, default="data/x"),
        parameter("layers", type=int, multiple=True),
        parameter("nothing", type=int),
        parameter("flag", type=bool),
        *BUILTIN_PARAMETERS,
    ]
    resolved = resolve(
        declared,
        [Layer(Source.CLI, "cli", {"layers": ["1", "2"], "random_seed": "11", "tag": ["t"]}, True)],
        environ={},
    )
    assert resolved.values["size"] == (2, 3)
    assert resolved.snapshot() == {
        "size": "2x3",  # custom parse callables keep their input string
        "data": "data/x",
        "layers": [1, 2],
        "flag": False,
        "random_seed": 11,
        "deterministic": False,
    }


# ---------------------------------------------------------------- Params


def test_params_read_only_mapping() -> None:
    params = Params({"epochs": 5, "lr": 0.01})
    assert params.epochs == 5 and params["lr"] == 0.01
    assert dict(params) == {"epochs": 5, "lr": 0.01}
    assert len(params) == 2 and "epochs" in params and list(params) == ["epochs", "lr"]
    copy = params.to_dict()
    copy["epochs"] = 1
    assert params.epochs == 5
    with pytest.raises(AttributeError, match="read-only"):
        params.epochs = 6
    with pytest.raises(TypeError):
        params["epochs"] = 6  # type: ignore[index]
    with pytest.raises(AttributeError, match="nope"):
        _ = params.nope
    with pytest.raises(KeyError):
        _ = params["nope"]
    assert "epochs" in repr(params)


def test_params_copy_and_pickle() -> None:
    """Params travel into spawned DataLoader workers and through copy.deepcopy."""
    params = Params({"epochs": 5, "layers": [1, 2]})
    for clone in (copy.copy(params), copy.deepcopy(params), pickle.loads(pickle.dumps(params))):
        assert isinstance(clone, Params)
        assert clone.to_dict() == {"epochs": 5, "layers": [1, 2]}
        with pytest.raises(AttributeError):
            clone.epochs = 1
    assert copy.deepcopy(params).layers is not params.layers
