"""Encoders: the backbone registry (torchvision's random initialisation, key layout, feature
dimension), ImageNet weight files in torchvision's and the IBN-Net release's key formats, the
clear errors when they are missing or do not fit, GeM pooling, IBN, last stride, BN neck."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pipeline.errors import PipelineError
from pipeline.models import build_model
from pipeline.models.backbones import BACKBONES, IBN
from pipeline.models.pooling import GeM, build_pooling

# ReIDModel.body is Sequential(conv1, bn1, relu, maxpool, layer1, ..., layer4) for a ResNet: the
# key layout of every ResNet checkpoint written so far
BODY_POSITION = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def body_key(torchvision_key: str) -> str:
    """``layer2.0.conv1.weight`` -> ``body.5.0.conv1.weight`` (the key in ReIDModel)."""
    top, rest = torchvision_key.split(".", 1)
    return f"body.{BODY_POSITION[top]}.{rest}"


def perturbed_torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's state dict with every float tensor redrawn, so that no value
    can match a freshly initialised model by chance (BN weights start at 1, means at 0...)."""
    generator = torch.Generator().manual_seed(7)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
    return state


def ibn_release_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite a torchvision ResNet-50 state dict into the IBN-Net ``resnet50_ibn_a`` layout: in
    layers 1-3 every block's ``bn1`` becomes ``bn1.IN`` (affine InstanceNorm, first half of the
    channels, no running statistics) and ``bn1.BN`` (BatchNorm, the other half)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("layer1", "layer2", "layer3") and parts[2] == "bn1":
            prefix, name = ".".join(parts[:3]), parts[3]
            if name == "num_batches_tracked":
                out[f"{prefix}.BN.{name}"] = value
                continue
            half = value.shape[0] // 2
            if name in ("weight", "bias"):
                out[f"{prefix}.IN.{name}"] = value[:half].clone()
            out[f"{prefix}.BN.{name}"] = value[half:].clone()
        else:
            out[key] = value
    return out


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_state_dict_loads_into_the_encoder(arch, tmp_path):
    state = perturbed_torchvision_state(arch)
    weights = tmp_path / f"{arch}.pth"
    torch.save(state, weights)
    model = build_model(arch, pretrained="imagenet", weights_path=str(weights))
    loaded = model.state_dict()
    compared = [key for key in state if not key.startswith("fc.")]
    assert len(compared) == len(state) - 2  # everything but fc.weight, fc.bias
    for key in compared:
        assert torch.equal(loaded[body_key(key)], state[key]), key


def test_torchvision_weights_found_in_the_torch_cache(tmp_path, empty_torch_home):
    state = perturbed_torchvision_state("resnet18")
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    model = build_model("resnet18", pretrained="imagenet")
    assert torch.equal(model.body[0].weight, state["conv1.weight"])


@pytest.mark.parametrize("wrapped", [False, True])
def test_ibn_release_state_dict_loads_into_the_encoder(wrapped, tmp_path):
    state = ibn_release_state(perturbed_torchvision_state("resnet50"))
    assert "layer1.0.bn1.IN.weight" in state and "layer3.5.bn1.BN.running_mean" in state
    assert "layer1.0.bn1.IN.running_mean" not in state
    saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrapped else state
    weights = tmp_path / "resnet50_ibn_a.pth"
    torch.save(saved, weights)
    model = build_model("resnet50_ibn_a", pretrained="imagenet", weights_path=str(weights))
    loaded = model.state_dict()
    for key in (k for k in state if not k.startswith("fc.")):
        assert torch.equal(loaded[body_key(key)], state[key]), key
    ibn = model.body[4][0].bn1
    assert isinstance(ibn, IBN) and ibn.IN.num_features == 32 and ibn.BN.num_features == 32


@pytest.mark.parametrize(
    ("arch", "file_name"),
    [
        ("resnet50", "resnet50-0676ba61.pth"),
        ("resnet50_ibn_a", "resnet50_ibn_a.pth"),
        ("mobilenet_v2", "mobilenet_v2-b0353104.pth"),
    ],
)
def test_imagenet_without_the_file_says_where_to_put_it(arch, file_name, empty_torch_home):
    expected = empty_torch_home / "hub" / "checkpoints" / file_name
    with pytest.raises(PipelineError) as raised:
        build_model(arch, pretrained="imagenet")
    message = str(raised.value)
    assert f"ImageNet weights for {arch} not found at {expected}" in message
    assert "Nothing is downloaded" in message and "pretrained: none" in message
    assert ("IBN-Net release" in message) == (arch == "resnet50_ibn_a")
    command = "run `python -m pipeline weights --arch mobilenet_v2`"
    assert (command in message) == (arch == "mobilenet_v2")


def test_imagenet_with_a_missing_configured_path_names_it(tmp_path, empty_torch_home):
    missing = tmp_path / "nowhere" / "r50.pth"
    with pytest.raises(PipelineError, match=f"not found at {missing}"):
        build_model("resnet50", pretrained="imagenet", weights_path=str(missing))


def test_weights_of_another_arch_are_refused(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(perturbed_torchvision_state("resnet18"), weights)
    with pytest.raises(PipelineError, match=r"resnet18\.pth: weights do not fit resnet50"):
        build_model("resnet50", pretrained="imagenet", weights_path=str(weights))


def test_plain_resnet50_weights_do_not_fit_ibn_a(tmp_path):
    weights = tmp_path / "resnet50.pth"
    torch.save(perturbed_torchvision_state("resnet50"), weights)
    with pytest.raises(
        PipelineError,
        match=r"weights do not fit resnet50_ibn_a: \d+ missing key\(s\).*is it the file for",
    ):
        build_model("resnet50_ibn_a", pretrained="imagenet", weights_path=str(weights))


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match=r"resnet18\.pth: cannot read weights"):
        build_model("resnet18", pretrained="imagenet", weights_path=str(weights))


def test_gem_starts_at_p3_and_is_trainable():
    pooling = build_model("resnet18", pooling="gem").pool
    assert isinstance(pooling, GeM)
    assert pooling.p.item() == 3.0 and pooling.p.requires_grad


def test_gem_with_p1_is_average_pooling_exactly():
    x = torch.rand(2, 5, 4, 3, generator=torch.Generator().manual_seed(0)) + 0.01
    assert torch.equal(GeM(p=1.0)(x), build_pooling("avg")(x))


def test_gem_is_the_generalised_mean():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert GeM()(x).item() == pytest.approx(expected, rel=1e-6)


def test_ibn_normalises_half_the_channels_per_instance_and_the_rest_per_batch():
    torch.manual_seed(0)
    ibn = IBN(6).train()
    x = torch.randn(4, 6, 5, 3) * 3 + 2
    y = ibn(x)
    first, rest = x[:, :3], x[:, 3:]
    per_instance = (first - first.mean((2, 3), keepdim=True)) / torch.sqrt(
        first.var((2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    per_batch = (rest - rest.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        rest.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(y[:, :3], per_instance)
    torch.testing.assert_close(y[:, 3:], per_batch)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize(("last_stride", "map_size"), [(1, (4, 2)), (2, (2, 1))])
def test_last_stride_sets_the_final_map_size(arch, last_stride, map_size):
    model = build_model(arch, last_stride=last_stride).eval()
    with torch.no_grad():
        features = model.body(torch.zeros(1, 3, 64, 32))
    assert features.shape[1:] == (model.feature_dim, *map_size)
    assert model.feature_dim == {"resnet18": 512, "mobilenet_v2": 1280}[arch]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_random_initialisation_is_torchvisions(arch):
    """With one seed, the encoder's body holds the numbers torchvision's network draws (ResNet
    checkpoints and results from before the registry stay reproducible), under the body's keys:
    a ResNet's by position (``BODY_POSITION``), MobileNetV2's ``features`` as ``body.0``."""
    torch.manual_seed(3)
    reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    torch.manual_seed(3)
    state = build_model(arch).state_dict()
    body_keys = [key for key in state if key.startswith("body.")]
    expected = [key for key in reference if not key.startswith(("fc.", "classifier."))]
    assert len(body_keys) == len(expected)
    for key in expected:
        mine = body_key(key) if arch == "resnet18" else f"body.0.{key.removeprefix('features.')}"
        assert torch.equal(state[mine], reference[key]), key


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_body_and_torchvision_keys_are_inverse(arch):
    backbone = BACKBONES[arch]
    body, _ = backbone.build()
    for key in body.state_dict():
        assert backbone.body_key(backbone.torchvision_key(key)) == key
    assert backbone.body_key(f"{backbone.classifier}.weight") is None
    with pytest.raises(KeyError):
        backbone.body_key("head.weight")


def test_embeddings_are_unit_length_bn_neck_outputs():
    model = build_model("resnet50").eval()
    assert model.feature_dim == 2048 and not model.neck.bias.requires_grad
    with torch.no_grad():
        embeddings = model(torch.randn(3, 3, 64, 32))
    assert embeddings.shape == (3, 2048)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_unknown_arch_pooling_and_pretrained_are_clear_errors():
    with pytest.raises(PipelineError, match="unknown arch 'vgg16'; choose one of resnet18"):
        build_model("vgg16")
    with pytest.raises(PipelineError, match="unknown pooling 'max'; choose one of avg, gem"):
        build_model("resnet18", pooling="max")
    with pytest.raises(PipelineError, match="unknown pretrained 'coco'; choose one of none"):
        build_model("resnet18", pretrained="coco")
