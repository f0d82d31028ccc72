"""What SimCLR and MoCo report, and MoCo as MoCo v2 defines it."""
from __future__ import annotations

import math

import pytest
import torch

from infoview.errors import ConfigError
from infoview.models import SplitBatchNorm2d, build_encoder, projector
from infoview.objectives import build, cross_view_pairs, in_batch_pairs, queue_logits
from infoview.pretrain.methods import MoCo, SimCLR


def small_encoder():
    torch.manual_seed(0)
    return build_encoder("resnet18", cifar_stem=True, img_size=16, channels=[8, 8, 16, 16])


def views(b=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)]


# ---- the MI figure ------------------------------------------------------------------


@pytest.mark.parametrize("objective,params", [("infonce", {}), ("ml_cpc", {"alpha": 1e-3}), ("ring", {})])
def test_simclr_reports_the_bound_on_the_cross_view_matrix(objective, params):
    enc = small_encoder()
    method = SimCLR(enc, projector(enc.feature_dim, 16, 8), build(objective, **params), temperature=0.2)
    method.eval()  # BatchNorm in eval mode: the embeddings below are the ones the step used
    x = views()
    out = method(x)
    with torch.no_grad():
        _, z = method.embed(x)
        ref = method.objective(*cross_view_pairs(z[0], z[1], 0.2))
        train = method.objective(*in_batch_pairs(z, 0.2))
    b = x[0].shape[0]
    if objective == "ml_cpc":  # below the 16 x 16 floor: certified at the floor, log(n (n - 1) + 1)
        assert out.ceiling == pytest.approx(math.log(b * (b - 1) + 1))
    else:
        assert out.ceiling == pytest.approx(math.log(b))  # m = 16 candidates, not the 31 of the in-batch rows
    torch.testing.assert_close(out.mi, ref.mi)
    expected_estimate = train.estimate if train.estimate is not None else train.mi
    torch.testing.assert_close(out.mi_estimate, expected_estimate)


def test_moco_reports_the_bound_on_the_batch_not_on_the_queue():
    enc = small_encoder()
    method = MoCo(enc, projector(enc.feature_dim, 16, 8), build("infonce"), queue_size=64, bn="none")
    out = method(views())
    assert out.ceiling == pytest.approx(math.log(16))  # the batch's 16 keys, not the 64 + 1 of the queue
    assert out.mi <= out.ceiling
    assert out.mi_estimate <= math.log(65) + 1e-6  # InfoNCE on the queue rows: an estimate


# ---- MoCo v2 ---------------------------------------------------------------------------


def moco(**kw):
    enc = small_encoder()
    return MoCo(enc, projector(enc.feature_dim, 16, 8), build("infonce"), queue_size=64, **kw)


def test_moco_defaults_are_moco_v2():
    m = moco()
    assert m.temperature == 0.2 and not m.symmetric
    for step in (0, 500, 1000):
        m.set_progress(step, 1000, step / 100)
        assert m.momentum == 0.999  # constant, as MoCo v2
    m = moco(momentum=0.99, momentum_final=1.0)  # BYOL's cosine stays available
    m.set_progress(1000, 1000, 10.0)
    assert m.momentum == 1.0


def _count_encoder_images(method, x):
    seen = []
    hook = method.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        method(x)
    finally:
        hook.remove()
    return seen


def test_asymmetric_moco_encodes_only_the_query_view():
    x = views()
    assert _count_encoder_images(moco(), x) == [16]  # the key view goes through the key encoder only
    assert _count_encoder_images(moco(symmetric=True), x) == [32]


def test_asymmetric_moco_trains_on_one_query_against_its_key():
    m = moco(bn="none")
    m.eval()  # BatchNorm on running statistics, so the check below recomputes the same embeddings
    x = views()
    queue = m.queue.negatives.clone()
    out = m(x)
    assert int(m.queue.ptr) == 16  # one view's keys enqueued
    with torch.no_grad():
        q = m.projector(m.encoder(x[0]))
        k = m.key(x[1])  # the key encoder, after this step's momentum update
    expected = build("infonce")(*queue_logits(q, k, queue, 0.2))
    torch.testing.assert_close(out.ssl_loss, expected.loss)


def test_one_process_moco_splits_batchnorm_and_shuffles_the_keys():
    m = moco()  # bn=auto on one process
    assert m.bn == "split" and m.bn_splits == 8
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(isinstance(mod, SplitBatchNorm2d) for mod in bns)  # query and key encoders alike
    x = views()[1]
    seen = []
    hook = m.key.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    torch.manual_seed(3)
    keys = m._keys(x)
    hook.remove()
    order = [int(torch.nonzero((x == row).all(dim=(1, 2, 3)))[0]) for row in seen[0]]
    assert sorted(order) == list(range(16)) and order != list(range(16))  # the key encoder saw a shuffled batch
    # ... whose keys come back in the batch's order (checked where BN does not depend on the grouping)
    m.key.eval()
    torch.testing.assert_close(m._keys(x), m.key(x))
    assert keys.shape == (16, 8)


def test_moco_bn_modes_that_would_leak_on_one_process_are_refused():
    for bn in ("shuffle", "sync"):
        with pytest.raises(ConfigError, match="moco.bn=split"):
            moco(bn=bn)
    with pytest.raises(ConfigError, match="one of"):
        moco(bn="ghost")
