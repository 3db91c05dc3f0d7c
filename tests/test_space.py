"""The style space: the facts.md formulas, batching, any K, file checks."""

import pytest
import torch
from safetensors.torch import save_file

from style_components.errors import ModelFileError
from style_components.space import StyleSpace


def make_space(k=6, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, k, generator=g)).Q.T  # orthonormal rows, as PCA gives
    return StyleSpace(torch.randn(d, generator=g), basis, torch.rand(k, generator=g) + 0.1,
                      labels=("warm <-> cool",) + ("",) * (k - 1), extractor="ex", name="s")


def test_formulas_and_batching():
    space = make_space()
    e = torch.randn(3, 5, 20)  # any batch shape
    z = space.to_components(e)
    assert z.shape == (3, 5, 6)
    torch.testing.assert_close(z, ((e - space.mean) @ space.components.T) / space.std)
    back = space.to_embedding(z)
    torch.testing.assert_close(back, (z * space.std) @ space.components + space.mean)
    # an embedding inside the space survives the round trip
    torch.testing.assert_close(space.to_components(back), z, atol=1e-5, rtol=1e-5)


def test_zero_sliders_are_the_mean_style_and_one_is_one_std():
    space = make_space()
    torch.testing.assert_close(space.to_embedding(torch.zeros(6)), space.mean)
    unit = torch.zeros(6)
    unit[2] = 1.0
    step = space.to_embedding(unit) - space.mean
    torch.testing.assert_close(step.norm(), space.std[2])


def test_fewer_values_than_k_pad_with_zero_and_more_are_refused():
    space = make_space()
    torch.testing.assert_close(space.to_embedding(torch.tensor([0.5, -1.0])),
                               space.to_embedding(torch.tensor([0.5, -1.0, 0, 0, 0, 0])))
    with pytest.raises(ValueError, match="7 component values given"):
        space.to_embedding(torch.zeros(7))


def test_save_load_round_trip(tmp_path):
    space = make_space()
    space.save(tmp_path / "s.safetensors")
    loaded = StyleSpace.load(tmp_path / "s.safetensors")
    assert (loaded.k, loaded.d, loaded.labels, loaded.extractor, loaded.name) == (6, 20, space.labels, "ex", "s")
    assert loaded.label(0) == "warm <-> cool" and loaded.label(1) == "Style component 2"
    for name in ("mean", "components", "std"):
        assert torch.equal(getattr(loaded, name), getattr(space, name))


@pytest.mark.parametrize("change,message,key", [
    ({"std": torch.ones(5)}, r"shape \[5\] where \[6\] is required", "std"),
    ({"mean": torch.ones(21)}, r"shape \[21\] where \[20\] is required", "mean"),
    ({"std": -torch.ones(6)}, "must be positive", "std"),
    ({"extra": torch.ones(1)}, "unexpected key", "extra"),
    ({"mean": torch.full((20,), float("nan"))}, "NaN or infinite", "mean"),
    # torch has no isfinite for float8_e4m3fn: found in review as a raw NotImplementedError
    ({"mean": torch.full((20,), float("nan")).to(torch.float8_e4m3fn)}, "NaN or infinite", "mean"),
    ({"std": torch.full((6,), 1e-45)}, "must be positive", "std"),  # denormal: sliders would be inf
    ({"components": torch.zeros(0, 20), "std": torch.ones(0)}, r"shape \[0, 20\] is empty", "components"),
])
def test_broken_files_name_the_key(tmp_path, change, message, key):
    space = make_space()
    tensors = {"mean": space.mean, "components": space.components, "std": space.std, **change}
    save_file(tensors, str(tmp_path / "bad.safetensors"), {"format": "style-components-space"})
    with pytest.raises(ModelFileError, match=message) as info:
        StyleSpace.load(tmp_path / "bad.safetensors")
    assert info.value.key == key


def test_other_kinds_of_file_are_refused(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "adapter.safetensors"), {"format": "style-components-adapter"})
    with pytest.raises(ModelFileError, match="expected a 'style-components-space' file"):
        StyleSpace.load(tmp_path / "adapter.safetensors")
