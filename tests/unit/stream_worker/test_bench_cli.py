import pytest
import torch
from typer.testing import CliRunner

from stream_worker.cli.app import app

runner = CliRunner()


def test_bench_rejects_an_unknown_device_with_one_sentence():
    result = runner.invoke(app, ["bench", "--device", "tpu"])
    assert result.exit_code == 2 and "--device must be cpu or cuda" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_on_cuda_without_a_gpu_says_so_before_starting_anything():
    result = runner.invoke(app, ["bench", "--device", "cuda"])
    assert result.exit_code == 2 and "torch sees no GPU" in result.output
