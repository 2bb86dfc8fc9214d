"""The evaluation end to end: JSON and PNG written, same seed -> same numbers, published anchors."""

from __future__ import annotations

import json

import pytest
import torch

from models.evaluate import main


def test_strong_protocol_writes_json_and_plot_and_repeats_itself(planted_udata, tmp_path):
    kwargs = dict(ratings=planted_udata, seeds=2, plot_out=None, data_dir=tmp_path, device="cpu", jobs=1)
    first = main("strong", ["pop", "ease", "multdae"], json_out=tmp_path / "a.json", **kwargs)
    again = main("strong", ["pop", "ease", "multdae"], json_out=None, **kwargs | {"plot_out": tmp_path / "p.png"})
    written = json.loads((tmp_path / "a.json").read_text())
    assert [r["model"] for r in written] == ["pop", "ease", "multdae"]
    for r in written:
        for metric in ("recall@20", "recall@50", "ndcg@100"):
            assert 0 <= r[metric] <= 1 and r[f"{metric}_se"] >= 0 and r[f"{metric}_se_seeds"] is not None
        assert r["seeds"] == 2 and r["train_seconds"] >= 0 and len(r["runs"]) == 2
    assert [r["ndcg@100"] for r in first] == [r["ndcg@100"] for r in again], "same seeds must give same numbers"
    assert (tmp_path / "p.png").stat().st_size > 10_000
    by_model = {r["model"]: r for r in first}
    assert by_model["ease"]["ndcg@100"] > by_model["pop"]["ndcg@100"] + 0.1


def test_strong_protocol_needs_a_ratings_file(tmp_path):
    with pytest.raises(ValueError, match="needs --ratings"):
        main("strong", ["pop"], None, 1, None, None, tmp_path)


@pytest.mark.data
def test_ease_beats_published_cfgan_on_its_own_split(data_dir):
    (ease,) = main("cfgan-ml100k", ["ease"], None, 1, None, None, data_dir, "cpu")
    assert ease["ndcg@20"] > 0.433


@pytest.mark.data
def test_ease_reaches_the_best_published_chrono_loo_ndcg(data_dir):
    (ease,) = main("chrono-loo", ["ease"], None, 1, None, None, data_dir, "cpu")
    assert ease["ndcg@10"] >= 0.06995


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_strong_protocol_runs_every_model_on_cuda(planted_udata, tmp_path):
    results = main(
        "strong",
        ["multvae", "multdae", "cfgan", "ease", "itemknn", "pop"],
        planted_udata,
        1,
        None,
        None,
        tmp_path,
        "cuda",
    )
    by_model = {r["model"]: r["ndcg@100"] for r in results}
    assert all(by_model[kind] > by_model["pop"] for kind in ("multvae", "multdae", "ease", "itemknn")), by_model
