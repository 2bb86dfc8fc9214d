import matplotlib.image
import scipy.sparse as sp

from models import checkpoint
from models.train import train_model
from stream_worker.devtools.demo_report import DemoRecord, write_report
from stream_worker.devtools.synthetic import SyntheticWorld


def test_the_report_draws_every_panel_from_a_real_model(tmp_path):
    world = SyntheticWorld(n_users=60, n_items=40)
    users, items, _ = world.sample(600, seed=1)
    X = sp.csr_matrix(([1.0] * 600, (users, items)), shape=(world.n_users, world.n_items), dtype="float32")
    X.data[:] = 1.0
    model, _ = train_model("multvae", X, device="cpu", epochs=2)
    checkpoint.save(model, tmp_path / "models", item_ids=world.item_ids(), name="multvae")
    series = [
        {"seconds": t, "events_per_s": 500.0, "recs_per_s": 300.0, "p50_s": 0.1, "p99_s": 0.3, "model_version": v}
        for t, v in [(1.0, 1), (2.0, 1), (3.0, 2)]
    ]
    records = [DemoRecord("u00001", 1, 0.5), DemoRecord("u00002", 2, 0.7)]
    path = write_report(
        tmp_path / "report.png", series, records, world, tmp_path / "models", history_seed=1, history=600
    )
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (1400, 1000)
