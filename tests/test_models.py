import pytest
import torch

from streamkd.models import CosineHead, LinearHead, ProjectionHead, build_model
from streamkd.strategies import ER


@pytest.mark.parametrize(("nf", "dim"), [(20, 160), (64, 512)])
def test_resnet18_feature_width(nf, dim):
    model = build_model("resnet18", (3, 32, 32), n_classes=10, nf=nf)
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    assert model.features(x).shape == (2, dim)
    assert model(x).shape == (2, 10)


def test_mlp_and_errors():
    model = build_model("mlp", (1, 8, 8), n_classes=3, hidden=(16,))
    assert model(torch.zeros(5, 1, 8, 8, dtype=torch.uint8)).shape == (5, 3)
    with pytest.raises(ValueError, match="unknown model architecture"):
        build_model("vit", (3, 32, 32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("resnet18", (784,))


def test_linear_head_grows_and_keeps_learnt_rows():
    head = LinearHead(4, 2)
    before = head.weight.detach().clone(), head.bias.detach().clone()
    assert head.grow(5) and head.out_features == 5
    assert torch.equal(head.weight[:2], before[0]) and torch.equal(head.bias[:2], before[1])
    assert not head.grow(3)
    assert head(torch.zeros(1, 4)).shape == (1, 5)


def test_cosine_head_is_scaled_cosine():
    head = CosineHead(3, 2, scale=1 / 0.09)
    head.weight.data = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])
    out = head(torch.tensor([[3.0, 0, 0]]))
    assert out[0].tolist() == pytest.approx([1 / 0.09, 0.0])


def test_projection_head_is_normalised():
    z = ProjectionHead(8, 4)(torch.randn(3, 8))
    assert torch.allclose(z.norm(dim=1), torch.ones(3))


def test_growing_head_keeps_adam_state_aligned():
    model = build_model("mlp", (4,), hidden=(8,))
    er = ER(model, optimizer="adam", lr=1e-3, memory=10)
    from streamkd.types import Batch

    er.observe(Batch(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])))
    w = model.head.weight
    exp_avg = er.optimizer.state[w]["exp_avg"].clone()
    er.observe(Batch(torch.randn(6, 4), torch.tensor([3, 2, 3, 2, 3, 2])))
    new_w = model.head.weight
    assert new_w.shape == (4, 8) and new_w is not w
    assert any(p is new_w for g in er.optimizer.param_groups for p in g["params"])
    assert not any(p is w for g in er.optimizer.param_groups for p in g["params"])
    assert er.optimizer.state[new_w]["exp_avg"].shape == (4, 8)
    assert exp_avg.abs().sum() > 0


def test_channels_last_is_opt_in_on_cpu_and_gives_the_same_numbers():
    from streamkd.types import Batch

    # inputs from their own generator: drawn from the global RNG they depended on which tests
    # ran first, and some draws (ties in max-pooling over integer pixels, which the two
    # layouts break differently) diverge by ~3e-3 after three steps
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    params = []
    for channels_last in (True, None):
        torch.manual_seed(0)
        model = build_model("resnet18", (3, 16, 16), nf=8)
        er = ER(model, memory=10, seed=0, channels_last=channels_last)
        conv = er.model.backbone.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) is bool(channels_last)
        assert er.hparams["channels_last"] is bool(channels_last)  # CPU default: off
        for _ in range(3):
            er.observe(Batch(x, y))
        params.append(torch.cat([p.detach().flatten() for p in er.model.parameters()]))
    # NHWC sums each convolution in another order: float32 rounding (~1e-7 relative) grown
    # through three SGD steps differs by 5.7e-7 at most here; 1e-5 leaves a 17x margin
    assert torch.allclose(params[0], params[1], rtol=0, atol=1e-5)
