"""Writes avalanche_plugin.ipynb (kept as code so its diff stays readable):
python make_avalanche_plugin.py"""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# streamkd inside Avalanche\n\n"
        "A class-incremental benchmark built with Avalanche's own generators (`nc_benchmark`, "
        "then `split_online_stream` for one pass in mini-batches of 10) from the offline "
        "MNIST files, and three learners reporting through the same `EvaluationPlugin`:\n\n"
        "* Avalanche's `ER_ACE`;\n"
        "* streamkd's `HPCR`, wrapped with `as_avalanche` (its buffer, augmentation and "
        "distillation stay streamkd's);\n"
        "* Avalanche's `Naive` with streamkd's `StreamkdReplayPlugin` (reservoir replay plus "
        "HPCR's logit distillation).\n\n"
        "`STREAMKD_NOTEBOOK_ROWS` sets the number of training samples (default 5,000)."
    ),
    nbf.v4.new_code_cell(
        "import os\n"
        "import warnings\n\n"
        "import torch\n"
        "from avalanche.benchmarks import nc_benchmark\n"
        "from avalanche.benchmarks.scenarios.online import split_online_stream\n"
        "from avalanche.benchmarks.utils.classification_dataset import (\n"
        "    _make_taskaware_tensor_classification_dataset as tensor_dataset,\n"
        ")\n"
        "from avalanche.evaluation.metrics import (\n"
        "    accuracy_metrics,\n"
        "    forgetting_metrics,\n"
        "    loss_metrics,\n"
        "    timing_metrics,\n"
        ")\n"
        "from avalanche.training import ER_ACE, Naive\n"
        "from avalanche.training.plugins import EvaluationPlugin\n\n"
        "from streamkd.experiment import make_strategy\n"
        "from streamkd.integrations.avalanche import StreamkdReplayPlugin, as_avalanche\n"
        "from streamkd.models import build_model\n"
        "from streamkd.streams.mnist import load_mnist\n\n"
        "warnings.simplefilter('ignore')  # Avalanche warns once per online experience\n"
        "ROWS = int(os.environ.get('STREAMKD_NOTEBOOK_ROWS', 5000))\n"
        "x, y, xt, yt = load_mnist()  # mnist/ under $STREAMKD_DATA (never downloaded)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "train_idx = torch.randperm(len(y), generator=g)[:ROWS]\n"
        "test_idx = torch.randperm(len(yt), generator=g)[:2000]\n"
        "bench = nc_benchmark(\n"
        "    tensor_dataset(x[train_idx], y[train_idx]),\n"
        "    tensor_dataset(xt[test_idx], yt[test_idx]),\n"
        "    n_experiences=5, task_labels=False, seed=0,\n"
        ")\n"
        "[exp.classes_in_this_experience for exp in bench.train_stream]"
    ),
    nbf.v4.new_markdown_cell(
        "Every learner gets its own `EvaluationPlugin` with the same metrics, trains on each "
        "experience as an online stream of 10-sample experiences, and is evaluated on the whole "
        "test stream after each experience (so forgetting is measured)."
    ),
    nbf.v4.new_code_cell(
        "def evaluator():\n"
        "    return EvaluationPlugin(\n"
        "        accuracy_metrics(experience=True, stream=True),\n"
        "        loss_metrics(stream=True),\n"
        "        forgetting_metrics(experience=True, stream=True),\n"
        "        timing_metrics(epoch=True),\n"
        "        loggers=[],\n"
        "    )\n\n\n"
        "def mlp(cosine=False):\n"
        "    torch.manual_seed(0)\n"
        "    model = build_model('mlp', (1, 28, 28), head='cosine' if cosine else 'linear',\n"
        "                        head_scale=1 / 0.09 if cosine else 1.0)\n"
        "    return model\n\n\n"
        "def run(strategy):\n"
        "    for exp in bench.train_stream:\n"
        "        strategy.train(split_online_stream([exp], experience_size=10, shuffle=False))\n"
        "        metrics = strategy.eval(bench.test_stream)\n"
        "    return metrics\n\n\n"
        "plain = mlp()\n"
        "plain.head.grow(10)  # Avalanche's strategies expect every class's output up front\n"
        "er_ace = ER_ACE(\n"
        "    model=plain, optimizer=torch.optim.SGD(plain.parameters(), lr=0.1),\n"
        "    mem_size=200, batch_size_mem=10, train_mb_size=10, evaluator=evaluator(),\n"
        ")\n"
        "hpcr = as_avalanche(make_strategy('hpcr', mlp(cosine=True), memory=200, seed=0),\n"
        "                    evaluator=evaluator())\n"
        "plugged = mlp()\n"
        "plugged.head.grow(10)\n"
        "naive_replay = Naive(\n"
        "    model=plugged, optimizer=torch.optim.SGD(plugged.parameters(), lr=0.1),\n"
        "    train_mb_size=10, evaluator=evaluator(),\n"
        "    plugins=[StreamkdReplayPlugin(memory=200, logit_distill=0.01)],\n"
        ")\n"
        "results = {name: run(s) for name, s in [('avalanche ER_ACE', er_ace),\n"
        "                                        ('streamkd HPCR (as_avalanche)', hpcr),\n"
        "                                        ('Naive + StreamkdReplayPlugin', naive_replay)]}"
    ),
    nbf.v4.new_markdown_cell("Both metric dicts, straight from Avalanche's `EvaluationPlugin`:"),
    nbf.v4.new_code_cell(
        "for name, metrics in results.items():\n"
        "    print(name)\n"
        "    for key in sorted(metrics):\n"
        "        if 'Stream' in key or 'Time' in key:\n"
        "            print(f'  {key}: {metrics[key]:.4f}')"
    ),
]

nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("avalanche_plugin.ipynb"))
