import scipy.sparse as sp

from models.report import format_metrics
from models.train import train_model


def test_on_progress_is_called_once_per_epoch_with_time_left():
    X = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype="float32")
    X.data[:] = 1.0
    seen = []
    train_model("multdae", X, device="cpu", epochs=3, on_progress=seen.append)
    assert [p.epoch for p in seen] == [1, 2, 3] and all(p.epochs == 3 for p in seen)
    assert seen[-1].seconds_left == 0 and seen[0].seconds_left >= 0
    assert seen[0].model is seen[-1].model
    assert all(p.loss is not None and p.loss > 0 for p in seen) and seen[0].loss != seen[-1].loss


def test_format_metrics_shows_counts_as_integers():
    assert format_metrics({"ndcg@20": 0.25034, "users": 196.0, "train_seconds": 3.2}) == "ndcg@20=0.2503, users=196"


def test_the_plot_of_models_without_curves_does_not_warn(tmp_path, recwarn):
    from models.report import plot

    results = [
        {"model": kind, "seeds": 1, "ndcg@20": 0.3, "ndcg@20_se": 0.01, "runs": [{"curve": []}]}
        for kind in ("ease", "pop")
    ]
    plot("strong", results, {}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert not [w for w in recwarn if "legend" in str(w.message).lower()]
