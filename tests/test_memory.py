"""Normal memory: kNN evidence, calibration and the fused score (model/memory.py)."""
import io

import numpy as np
import pytest
import torch

from metaad_dist.config import ModelConfig
from metaad_dist.model.isolation import TensorIsolationForest
from metaad_dist.model.memory import NormalMemory
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.setup import memory_rows


ARGS = dict(hidden_dims=[8], embed_dim=4, memory_rows=200, calibration_rows=100, isolation_trees=20, isolation_samples=64)


def filled_model(rows=200, cal=100, dim=4, seed=0):
    torch.manual_seed(seed)
    model = MetaADModel(dim, 3, **ARGS).eval()
    normal = torch.randn(rows + cal, dim)
    model.fill_memory(normal[:rows], normal[rows:], "msp")
    return model


def test_evidence_is_monotone_and_keeps_growing_past_the_reference():
    mem = NormalMemory(in_dim=2, rows=5, k=1, calibration_rows=100)
    mem.reference.copy_(torch.linspace(0, 1, 100).expand(2, -1))
    s = torch.tensor([-1.0, 0.0, 0.5, 0.99, 1.0, 2.0, 10.0])
    t = mem.evidence(s, 0)
    assert torch.all(t[1:] >= t[:-1])
    assert t[0] == 0 and t[-1] > t[-2] > t[-3]  # below every normal: no evidence; beyond: keeps ranking
    # Half the normal references lie below 0.5: evidence -log(1 - 0.5) ~ 0.69.
    assert abs(float(t[2]) - np.log(2)) < 0.05


def test_knn_distance_matches_brute_force():
    mem = NormalMemory(in_dim=3, rows=50, k=3, calibration_rows=10)
    bank, x = torch.randn(50, 3), torch.randn(7, 3)
    mem.bank.copy_(bank)
    expected = torch.cdist(x, bank).sort(dim=1).values[:, :3].mean(dim=1)
    assert torch.allclose(mem.knn_distance(x, chunk=2), expected, atol=1e-5)


def test_fused_score_ranks_far_rows_above_normal_rows_and_survives_a_checkpoint():
    model = filled_model()
    near, far = torch.randn(20, 4), torch.randn(20, 4) + 8.0
    fused = model.anomaly_score(torch.cat([near, far]))
    assert fused[20:].min() > fused[:20].max()
    assert not torch.allclose(fused, model.network_score(torch.cat([near, far])))

    model.memory.set_weights([0.5, 1.0, 0.0])  # the weights a run chose travel with its checkpoint
    fused = model.anomaly_score(torch.cat([near, far]))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    rebuilt = MetaADModel(4, 3, **ARGS).eval()
    rebuilt.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.allclose(rebuilt.anomaly_score(torch.cat([near, far])), fused)


def test_fusion_weights_scale_each_evidence():
    model = filled_model()
    x = torch.cat([torch.randn(10, 4), torch.randn(10, 4) + 3.0])
    mem, network = model.memory, model.network_score(x)
    evidence = torch.cat([mem.evidence(network, 0)[None], mem.one_class_evidence(x)])
    for weights in ([1.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 1.0]):
        mem.set_weights(weights)
        expected = sum(w * e for w, e in zip(weights, evidence))
        assert torch.allclose(model.anomaly_score(x), expected)
    mem.set_weights([0.0, 1.0, 1.0])  # no network weight: the network cannot move the score
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))
    assert torch.allclose(model.anomaly_score(x), expected)


def test_an_unfilled_memory_leaves_the_network_score():
    model = MetaADModel(4, 3, hidden_dims=[8], embed_dim=4, memory_rows=10, calibration_rows=30).eval()
    x = torch.randn(5, 4)
    assert torch.equal(model.anomaly_score(x), model.network_score(x))


def test_memory_rows_are_seeded_subsets_and_can_be_switched_off():
    normal, val = np.random.default_rng(0).normal(size=(500, 3)), np.random.default_rng(1).normal(size=(300, 3))
    cfg = ModelConfig(memory_rows=100, memory_calibration_rows=50)
    m1, c1 = memory_rows(cfg, normal, val, seed=3)
    m2, c2 = memory_rows(cfg, normal, val, seed=3)
    assert m1.shape == (100, 3) and c1.shape == (50, 3) and np.array_equal(m1, m2) and np.array_equal(c1, c2)
    assert len(memory_rows(ModelConfig(memory_rows=0), normal, val, 0)[0]) == 0
    assert len(memory_rows(cfg, normal, val[:5], 0)[0]) == 0  # too few validation rows to calibrate


def test_tensor_isolation_forest_ranks_exactly_as_scikit_learn():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(3000, 6)).astype(np.float32), (1.5 * rng.normal(size=(300, 6))).astype(np.float32)
    forest = TensorIsolationForest(*TensorIsolationForest.shape_for(50, 256))
    forest.fit(x, seed=3)
    depth = -forest.anomaly_score(torch.as_tensor(q)).numpy()
    reference = -IsolationForest(n_estimators=50, max_samples=256, random_state=3, n_jobs=1).fit(x).score_samples(q)
    c = 2 * (np.log(255) + 0.5772156649) - 2 * 255 / 256  # c(256): sklearn's normaliser
    assert np.allclose(2 ** (-depth / c), reference, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("model.memory_k=0", "model.memory_k=0; expected an integer >= 1"),
    ("model.memory_isolation_samples=1", "model.memory_isolation_samples=1; expected an integer >= 2"),
    ("model.background_hidden=[0]", "model.background_hidden=[0]; expected positive layer sizes"),
    ("model.fusion_candidates=[[1,1]]",
     "model.fusion_candidates=[[1, 1]]; expected a non-empty list of [network, knn, isolation, "
     "reconstruction] weights (the last may be left out: 0), each >= 0 and not all 0"),
    ("model.fusion_candidates=[[0,0,0]]",
     "model.fusion_candidates=[[0, 0, 0]]; expected a non-empty list of [network, knn, isolation, "
     "reconstruction] weights (the last may be left out: 0), each >= 0 and not all 0"),
    ("model.fusion_candidates=[[1,x,1]]",
     "model.fusion_candidates=[[1, 'x', 1]]; expected a non-empty list of [network, knn, isolation, "
     "reconstruction] weights (the last may be left out: 0), each >= 0 and not all 0"),
    ("model.fusion_candidates=[[0,1,1,1]] model.memory_reconstruction=none",
     "model.fusion_candidates gives the reconstruction evidence a weight but model.memory_reconstruction is none; "
     "expected pca or autoencoder, or reconstruction weights of 0"),
    ("model.memory_reconstruction=autoencoder model.memory_autoencoder_hidden=[]",
     "model.memory_autoencoder_hidden=[] with model.memory_reconstruction=autoencoder; expected a layer list such "
     "as [64, 32], or memory_reconstruction=pca / none"),
    ("model.memory_reconstruction=svd", "model.memory_reconstruction='svd'; expected one of pca, autoencoder, none"),
    ("model.memory_pca_components=0", "model.memory_pca_components=0; expected an integer >= 1"),
    ("model.memory_autoencoder_hidden=[64,0]", "model.memory_autoencoder_hidden=[64, 0]; expected positive layer sizes"),
    ("model.memory_autoencoder_epochs=0", "model.memory_autoencoder_epochs=0; expected an integer >= 1"),
    ("model.memory_autoencoder_lr=0", "model.memory_autoencoder_lr=0.0; expected a number > 0"),
    ("model.fusion_folds=0", "model.fusion_folds=0; expected an integer >= 1"),
    ("model.fusion_rule=median", "model.fusion_rule='median'; expected one of delong, one_se, best_mean"),
    ("model.background_features=sign",
     "model.background_features='sign'; expected one of row, deviation"),
    ("model.memory_calibration_rows=-5", "model.memory_calibration_rows=-5; expected an integer >= 20"),
])
def test_bad_memory_settings_are_one_line_errors(compose, override, message):
    from metaad_dist.errors import ConfigError
    from metaad_dist.train.setup import prepare_training

    with pytest.raises(ConfigError) as err:
        prepare_training(compose("data=digits", *override.split(" ")))
    assert str(err.value) == message


def low_rank_rows(n, seed, dim=8, rank=2):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=torch.Generator().manual_seed(0))
    return torch.randn(n, rank, generator=g) @ basis + 0.05 * torch.randn(n, dim, generator=g)


def shuffled_columns(rows):
    """Each column shuffled on its own: every feature keeps its normal marginal, the joint
    structure is gone; only an evidence that models combinations of features sees it."""
    return torch.stack([c[torch.randperm(len(c), generator=torch.Generator().manual_seed(i))]
                        for i, c in enumerate(rows.T)], dim=1)


def test_autoencoder_ranks_rows_that_break_the_normal_structure_high_and_is_reproducible():
    from metaad_dist.model.reconstruction import NormalAutoencoder

    normal, test_normal, shuffled = low_rank_rows(2000, 1), low_rank_rows(300, 2), shuffled_columns(low_rank_rows(300, 3))
    ae = NormalAutoencoder(8, [16, 4], epochs=30, lr=3e-3, batch_size=64)
    torch.manual_seed(123)
    before = torch.rand(3)
    ae.fit(normal, seed=7)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is untouched
    errors = ae.reconstruction_error(torch.cat([test_normal, shuffled]))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([0] * 300 + [1] * 300, errors.numpy()) > 0.95
    again = NormalAutoencoder(8, [16, 4], epochs=30, lr=3e-3, batch_size=64)
    again.fit(normal, seed=7)
    assert torch.equal(again.reconstruction_error(shuffled), ae.reconstruction_error(shuffled))
    assert not any(p.requires_grad for p in ae.parameters())  # fitted once; no optimiser moves it


def test_principal_subspace_is_the_pca_residual_and_ranks_broken_structure_high():
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    from metaad_dist.model.reconstruction import PrincipalSubspace

    normal, test_normal, shuffled = low_rank_rows(2000, 1), low_rank_rows(300, 2), shuffled_columns(low_rank_rows(300, 3))
    subspace = PrincipalSubspace(8, 2)
    subspace.fit(normal)
    x = torch.cat([test_normal, shuffled])
    pca = PCA(n_components=2).fit(normal.double().numpy())  # scikit-learn's residual as the reference
    rebuilt = pca.inverse_transform(pca.transform(x.double().numpy()))
    expected = ((x.double().numpy() - rebuilt) ** 2).mean(axis=1)
    assert np.allclose(subspace.reconstruction_error(x).numpy(), expected, rtol=1e-3, atol=1e-6)
    assert roc_auc_score([0] * 300 + [1] * 300, subspace.reconstruction_error(x).numpy()) > 0.95
    assert subspace.reconstruction_error(x[:0]).shape == (0,)


AE_ARGS = dict(ARGS, reconstruction="autoencoder", autoencoder_hidden=[8, 4], autoencoder_fit=[20, 3e-3, 64])
PCA_ARGS = dict(ARGS, reconstruction="pca", pca_components=2)


@pytest.mark.parametrize("args", [AE_ARGS, PCA_ARGS], ids=["autoencoder", "pca"])
def test_the_reconstruction_evidence_is_fused_and_travels_with_a_checkpoint(args):
    torch.manual_seed(0)
    model = MetaADModel(8, 3, **args).eval()
    model.fill_memory(low_rank_rows(200, 1), low_rank_rows(100, 2), "msp", seed=3)
    mem = model.memory
    assert mem.parts == [0, 1, 2, 3] and mem.reference.shape[0] == 4
    x = torch.cat([low_rank_rows(20, 4), low_rank_rows(20, 5) * torch.tensor([1.0, -1.0] * 4)])
    mem.set_weights([0.0, 0.0, 0.0, 1.0])
    expected = mem.evidence(mem.reconstruction.reconstruction_error(x), 3)
    assert torch.allclose(model.anomaly_score(x), expected)
    mem.set_weights([0.5, 1.0, 1.0, 1.0])
    fused = model.anomaly_score(x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    rebuilt = MetaADModel(8, 3, **args).eval()
    rebuilt.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.allclose(rebuilt.anomaly_score(x), fused)


def test_a_checkpoint_whose_reconstruction_model_was_called_autoencoder_still_loads():
    """Checkpoints written before memory_reconstruction: no `reconstruction` argument (so the
    autoencoder) and state keys under memory.autoencoder."""
    torch.manual_seed(0)
    model = MetaADModel(8, 3, **AE_ARGS).eval()
    model.fill_memory(low_rank_rows(200, 1), low_rank_rows(100, 2), "msp", seed=3)
    state = {k.replace("memory.reconstruction.", "memory.autoencoder."): v for k, v in model.state_dict().items()}
    old_args = {k: v for k, v in AE_ARGS.items() if k != "reconstruction"}
    rebuilt = MetaADModel(8, 3, **old_args).eval()
    rebuilt.load_state_dict(state)
    x = low_rank_rows(20, 4)
    assert torch.equal(rebuilt.anomaly_score(x), model.anomaly_score(x))


def test_a_checkpoint_with_three_fusion_weights_still_loads():
    model = filled_model()
    state = model.state_dict()
    state["memory.weights"] = torch.tensor([1.0, 0.5, 0.0])  # written before the reconstruction part
    rebuilt = MetaADModel(4, 3, **ARGS).eval()
    rebuilt.load_state_dict(state)
    assert rebuilt.memory.weights.tolist() == [1.0, 0.5, 0.0, 0.0]
