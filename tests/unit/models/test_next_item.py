"""load_interactions, the next-item protocol, and chrono-loo's time-ordered training view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import chrono_loo_sequences, load_chrono_loo, load_interactions
from models.evaluate import main, run_protocol
from models.protocols import next_item

from .test_sequence_models import cycles


def test_load_interactions_reads_headers_commas_and_sorts_by_time(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n7,30,50\n5,10,9\n7,20,10\n7,40,50\n")
    log = load_interactions(path)
    assert log.user_ids == ["5", "7"] and log.item_ids == ["10", "20", "30", "40"]
    assert [c.tolist() for c in log.sequences.codes] == [[0], [1, 2, 3]]  # by time; the tie keeps line order
    plain = tmp_path / "log.txt"
    plain.write_text("2 9\n1 3\n2 1\n")
    assert [c.tolist() for c in load_interactions(plain).sequences.codes] == [[1], [2, 0]]  # line order


def write_walks(path: Path) -> Path:
    seqs = cycles(n_users=200, n_items=60)
    path.write_text("".join(f"{u + 1} {i + 1}\n" for u, c in enumerate(seqs.codes) for i in c.tolist()))
    return path


def test_next_item_split_and_sampled_negatives(tmp_path):
    path = write_walks(tmp_path / "walks.txt")
    p = next_item(path, negatives=20, seed=0)
    seqs = load_interactions(path).sequences
    u = 0
    assert p.test_target[u].indices.tolist() == [seqs.codes[u][-1]]
    assert p.val_target[u].indices.tolist() == [seqs.codes[u][-2]]
    assert p.tune_sequences is not None and p.test_sequences is not None
    assert p.tune_sequences.codes[u].tolist() == seqs.codes[u][:-2].tolist()
    assert p.test_sequences.codes[u].tolist() == seqs.codes[u][:-1].tolist()
    assert p.test_candidates is not None
    row = set(p.test_candidates[u].indices.tolist())
    assert len(row) == 21 and seqs.codes[u][-1] in row and not (row - {seqs.codes[u][-1]}) & set(seqs.codes[u].tolist())
    again = next_item(path, negatives=20, seed=0).test_candidates
    assert again is not None and (again != p.test_candidates).nnz == 0, "the draw must be seeded"


def test_next_item_runs_bag_and_sequence_models(tmp_path):
    path = write_walks(tmp_path / "walks.txt")
    kwargs = dict(ratings=None, seeds=1, data_dir=tmp_path, device=torch.device("cpu"), interactions=path)
    full = {r["model"]: r for r in run_protocol("next-item", ["pop", "ease", "sasrec"], **kwargs)}
    assert full["sasrec"]["ndcg@10"] > full["ease"]["ndcg@10"] + 0.1 > full["pop"]["ndcg@10"]
    assert full["sasrec"]["data"]["test_users"] == 200 and 0 <= full["pop"]["hr@10"] <= 1
    sampled = {r["model"]: r for r in run_protocol("next-item", ["pop"], negatives=20, **kwargs)}
    assert "sampled_hr@10" not in full["pop"]
    assert sampled["pop"]["sampled_hr@10"] > full["pop"]["hr@10"], "10 of 21 candidates is easier than 10 of 60"
    # One run with negatives gives the full-ranking figures too, the same as a run without.
    assert {m: sampled["pop"][m] for m in ("hr@10", "ndcg@10", "ndcg@20")} == {
        m: full["pop"][m] for m in ("hr@10", "ndcg@10", "ndcg@20")
    }
    assert 0 <= sampled["pop"]["sampled_ndcg@10"] <= sampled["pop"]["sampled_hr@10"] <= 1


def test_next_item_needs_a_file(tmp_path):
    with pytest.raises(ValueError, match="needs --interactions"):
        main("next-item", ["pop"], None, 1, None, None, tmp_path)


@pytest.mark.data
def test_chrono_loo_training_view_is_in_time_order(data_dir):
    folder = data_dir / "ml-100k-chrono-loo"
    seqs = chrono_loo_sequences(folder, data_dir / "ml-100k" / "u.data")
    assert seqs.times is not None and all(np.all(np.diff(t) >= 0) for t in seqs.times)
    assert (seqs.to_csr() != load_chrono_loo(folder).train).nnz == 0
