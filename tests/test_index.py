import numpy as np
import pytest
import torch

from streamkd.index import VectorIndex


def test_add_search_replace_remove_and_stable_ids(tmp_path):
    index = VectorIndex(3, metric="l2")
    vecs = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 5, 0]])
    index.add(vecs, [10, 20, 30])
    scores, ids = index.search(torch.tensor([[0.9, 0, 0]]), k=2)
    assert ids.tolist() == [[20, 10]]
    assert scores[0, 0].item() == pytest.approx(0.01, abs=1e-6)
    # re-adding an id replaces its vector; ids of the others do not move
    index.add(torch.tensor([[0.0, 5, 0.1]]), [20])
    assert len(index) == 3
    assert index.search(torch.tensor([[0.0, 5, 0]]), k=1)[1].item() in (20, 30)
    assert index.remove([30, 99]) == 1
    assert 30 not in index and len(index) == 2
    np.testing.assert_allclose(index.reconstruct(10), [0, 0, 0])
    path = tmp_path / "idx.faiss"
    index.save(path)
    loaded = VectorIndex.load(path)
    assert len(loaded) == 2 and 20 in loaded and loaded.metric == "l2"
    assert loaded.search(torch.tensor([[0.0, 4, 0]]), k=1)[1].item() == 20


def test_inner_product_cosine_and_missing_slots():
    index = VectorIndex(2, metric="ip", normalize=True)
    index.add(np.array([[10.0, 0], [0, 0.1]]), np.array([1, 2]))
    scores, ids = index.search(np.array([[0.0, 3.0]]), k=3)
    assert ids[0].tolist() == [2, 1, -1]
    assert scores[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_explained():
    index = VectorIndex(4)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.add(torch.zeros(2, 3), [1, 2])
    with pytest.raises(ValueError, match="2 vectors but 1 ids"):
        index.add(torch.zeros(2, 4), [1])
    with pytest.raises(ValueError, match="NaN"):
        index.add(torch.full((1, 4), float("nan")), [1])
    with pytest.raises(ValueError, match="unknown metric"):
        VectorIndex(4, metric="cos")
    with pytest.raises(FileNotFoundError):
        VectorIndex.load("/nonexistent/index.faiss")
