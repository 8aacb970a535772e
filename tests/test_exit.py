"""Interpreter exit with a partly consumed iterator still alive: no ``Exception ignored in:
<generator object Loader._iterate>`` on stderr, whoever holds the iterator."""

from __future__ import annotations

import sys
import textwrap

from .conftest import run_with_repo

SCRIPT = textwrap.dedent(
    """
    import torch
    import aioloader as al

    class Trainer:  # holds its iterators in a reference cycle, as trainer objects do
        def __init__(self):
            self.me = self
            loader = al.Loader.from_source(range(1000)).map(abs, executor="thread").batch(4)
            for i, batch in enumerate(loader):
                if i == 2:
                    break
            self.iterator = iter(loader)
            next(self.iterator)
            dataset = torch.utils.data.TensorDataset(torch.arange(100.0))
            config = al.DataLoaderConfig(batch_size=4, num_workers=0, pin_memory=False)
            self.compat = iter(al.EfficientDataLoader(dataset, config))
            next(self.compat)

    Trainer()
    module_level = iter(al.Loader.from_source(range(100)).batch(8))
    next(module_level)
    print("done")
    """
)


def test_exit_with_live_partly_consumed_iterators_is_clean(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    done = run_with_repo([sys.executable, "train.py"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert done.stderr == ""
