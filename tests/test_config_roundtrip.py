"""The one dataclass <-> dict converter (`stream_engine.dataclass_io`): every config dataclass of the project,
found by walking the packages (so a new one is covered without touching this file), survives
`from_dict(to_dict(c))` equal and hashable, also through JSON text; overrides, files and errors behave."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

from stream_engine.dataclass_io import ConfigError, apply_overrides, from_dict, load_config, to_dict

PACKAGES = ("stream_engine", "training", "export", "benchmarks")


def _modules():
    """Every importable module of the project's packages (a module whose optional dependency is missing here,
    e.g. TensorRT, is skipped: its configs cannot be built on this machine either)."""
    out = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        out.append(pkg)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            try:
                out.append(importlib.import_module(info.name))
            except ImportError:
                continue
    return out


def config_classes() -> list[type]:
    """Dataclasses named *Config defined in the project's modules."""
    found = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and name.endswith("Config")
                and obj.__module__ == mod.__name__
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


CONFIGS = config_classes()


def test_the_walk_finds_the_known_configs():
    names = {c.__name__ for c in CONFIGS}
    assert {
        "GeneratorConfig",
        "TrainGeneratorConfig",
        "TrainSyncersConfig",
        "SyncerConfig",
        "EvalConfig",
        "EvalSyncConfig",
        "FrontEndConfig",
        "ClipLoadConfig",
        "StreamConfig",
        "ModelConfig",
    } <= names
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_config_round_trips_equal_and_hashable(cls):
    cfg = _instance(cls)
    back = from_dict(cls, to_dict(cfg))
    assert back == cfg
    via_json = from_dict(cls, json.loads(json.dumps(to_dict(cfg))))
    assert via_json == cfg
    assert hash(back) == hash(cfg) == hash(via_json)


SAMPLES = {str: "x", int: 1, float: 1.0, bool: True, Path: Path("x")}


def _instance(cls):
    """The defaults, with a sample value for each field that has none (e.g. PrepareConfig.out_dir)."""
    import typing

    hints = typing.get_type_hints(cls)
    required = {
        f.name: SAMPLES[hints[f.name]]
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return cls(**required)


def test_generator_config_from_a_checkpoint_equals_the_one_built_in_code(tmp_path):
    """The old training converter made only the outer list of level_dilations a tuple: unequal, unhashable."""
    from training.checkpoint import load_meta, save_module
    from training.models.generator import GeneratorConfig

    cfg = GeneratorConfig(level_dilations=((1, 2), (4,)), branch_levels=(0, 1))
    torch = pytest.importorskip("torch")
    save_module(tmp_path / "g", torch.nn.Linear(1, 1), {"generator": cfg})
    loaded = from_dict(GeneratorConfig, load_meta(tmp_path / "g")["generator"])
    assert loaded == cfg and hash(loaded) == hash(cfg)
    assert loaded.level_dilations == ((1, 2), (4,)) and isinstance(loaded.level_dilations[0], tuple)


def test_contract_round_trips():
    """The exported contract (a dataclass with nested specs and shape unions) goes through the same converter."""
    from stream_engine.contract import StepContract

    from fakes import fake_contract

    c = fake_contract()
    back = from_dict(StepContract, json.loads(json.dumps(to_dict(c))))
    assert back == c and hash(back) == hash(c)
    assert back.states[0].shape == ("B", 3) and back.audio_input.to_json() == {
        "name": "audio",
        "shape": ["B", 640],
        "dtype": "float32",
    }


def test_overrides_files_and_errors(tmp_path):
    from training.train_generator import TrainGeneratorConfig

    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "_comment": "presets explain themselves",
                "steps": 7,
                "generator": {"level_dilations": [[1], [2, 2]], "branch_levels": [0, 1]},
            }
        )
    )
    cfg = load_config(
        TrainGeneratorConfig,
        path,
        ["generator.lookahead_frames=0", "lr_g=1e-4", "device=cpu", "discriminator.windows=[5,10]"],
    )
    assert cfg.steps == 7 and cfg.generator.lookahead_frames == 0 and cfg.lr_g == 1e-4 and cfg.device == "cpu"
    assert cfg.generator.level_dilations == ((1,), (2, 2)) and hash(cfg)
    with pytest.raises(ConfigError, match="unknown setting 'generator.nope'"):
        load_config(TrainGeneratorConfig, None, ["generator.nope=1"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(TrainGeneratorConfig, None, ["steps=many"])
    path.write_text(json.dumps({"generator": {"nope": 1}}))
    with pytest.raises(ConfigError, match="c.json: unknown setting 'generator.nope'"):
        load_config(TrainGeneratorConfig, path)
    with pytest.raises(FileNotFoundError):
        load_config(TrainGeneratorConfig, tmp_path / "missing.json")
    data = {"a": {"b": 1}}
    apply_overrides(data, ["a.b=[1, 2]"])
    assert data == {"a": {"b": [1, 2]}}
