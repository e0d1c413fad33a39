"""dmn-train --compile modes: what each one wraps (compiling itself is too slow for a CPU test:
pipelines/bench_compile.py measures it)."""

import dataclasses

import pytest
import torch

from dmn_model import DMN, preset
from dmn_train.train import COMPILE_MODES, TrainConfig, compile_model, train_config


def test_modes_and_old_boolean_configs():
    assert COMPILE_MODES == ("none", "backbone", "all")
    cfg = train_config("tiny", "shards/toy")
    assert cfg.compile == "none"
    # config.json of runs trained before the modes stored a bool
    stored = {**dataclasses.asdict(cfg), "compile": True}
    assert TrainConfig(**stored).compile == "backbone"
    assert TrainConfig(**{**stored, "compile": False}).compile == "none"
    with pytest.raises(ValueError, match="--compile must be one of none, backbone, all"):
        train_config("tiny", "shards/toy", compile="everything")


def test_backbone_mode_compiles_the_non_recurrent_parts_in_place():
    model = DMN(preset("tiny"), 50)
    keys = list(model.state_dict())
    assert compile_model(model, model, "backbone") is model
    assert model.backbone._compiled_call_impl is not None
    assert model.upsampling is None or model.upsampling._compiled_call_impl is not None
    assert "fused_input" in vars(model.synthesis)  # the compiled bound method
    assert model.language._compiled_call_impl is None  # recurrent nets stay eager
    assert model.synthesis.mrnn._compiled_call_impl is None
    assert list(model.state_dict()) == keys  # checkpoints keep their keys


def test_all_and_none_modes():
    model = DMN(preset("tiny"), 50)
    assert compile_model(model, model, "none") is model
    wrapped = compile_model(model, model, "all")
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert wrapped._orig_mod is model


def test_compiling_excludes_the_sru_recurrence_but_importing_does_not_load_dynamo():
    import subprocess
    import sys
    code = ("import sys, dmn_model, dmn_model.sru as s; "
            "assert 'torch._dynamo' not in sys.modules; "
            "assert not getattr(s.sru_recurrence, '_dmn_eager', False)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from dmn_model import sru
    model = DMN(preset("tiny"), 50)
    compile_model(model, model, "backbone")
    assert sru.sru_recurrence._dmn_eager
    first = sru.sru_recurrence
    compile_model(model, model, "all")
    assert sru.sru_recurrence is first  # idempotent
