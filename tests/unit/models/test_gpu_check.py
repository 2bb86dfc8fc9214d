"""The GPU script's checks run on the CPU too, so a broken script is caught here before the GPU machine."""

from tests.benchmarks.gpu_check import check_sequence_path, check_sparse_path


def test_gpu_check_sparse_path_runs_on_the_cpu():
    figures = check_sparse_path("cpu", n_items=200, n_users=256, length=20)
    assert set(figures) == {"b1 dense", "b1 sparse", "b256 dense", "b256 sparse"}
    assert all(rate > 0 for rate in figures.values())


def test_gpu_check_sequence_path_runs_on_the_cpu():
    figures = check_sequence_path("cpu", n_items=100, n_users=64, length=12, epochs=1)
    assert set(figures) == {"b1 users/s", "b256 users/s", "cpu s/epoch"}
    assert all(value > 0 for value in figures.values())
