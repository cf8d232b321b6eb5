"""The README's "Using the library on your own model" block, run as it stands on a small CNN."""
import re

import torch
from torch import nn

from helpers import REPO
from qat.modules import quant_layers


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using the library on your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_ours_on_a_small_cnn(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    images = torch.randn(32, 1, 12, 12)
    labels = (images.mean((1, 2, 3)) > 0).long() + 2 * (images[:, :, :6].mean((1, 2, 3)) > 0).long()
    train_loader = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 32, 8)]

    def evaluate(m):
        return 100.0 * sum(int((m(x).argmax(1) == y).sum()) for x, y in train_loader) / 32

    namespace = {"model": model, "train_loader": train_loader, "evaluate": evaluate}
    exec(compile(readme_example(), "README.md", "exec"), namespace)

    assert len(list(quant_layers(model))) == 3  # both convolutions and the classifier are quantized
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # folded
    assert namespace["state"].iteration == 10 * len(train_loader)
    ead = next(h for h in namespace["hooks"] if type(h).__name__ == "EADHook")
    assert ead.tau == 32 and ead.epoch_metrics(namespace["state"])["ead/active"] == 1.0  # the last 20 % ran EAD
    printed = capsys.readouterr().out
    assert "afw/changed_codes" in printed and "afw/metric" in printed, printed


def test_loader_task_gives_post_steps_what_they_ask_for():
    from qat.task import LoaderTask
    batches = [(torch.full((2, 3), float(i)), torch.tensor([i, i])) for i in range(6)]
    model = nn.Linear(3, 6).train()
    task = LoaderTask(batches, nn.functional.cross_entropy, lambda m: 42.0 if not m.training else -1.0)
    assert [int(y[0]) for _, y in task.calib_batches()] == [0, 1, 2, 3]  # the loader's first 4
    assert task.iterations_for(1.5) == 9 and len(list(task.train_batches(epochs=2))) == 12
    assert task.evaluate(model) == {"metric": 42.0} and model.training  # evaluated in eval mode, mode restored
    assert torch.equal(task.inputs(batches[5]), batches[5][0]) and task.loss(model, batches[0]).ndim == 0
    assert len(LoaderTask(batches, None, None, calib=batches[4:]).calib_batches()) == 2
