"""Writes quickstart.ipynb (kept as code so its diff stays readable): python make_quickstart.py"""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# streamkd quickstart\n\n"
        "A class-incremental stream (Split-Digits, embedded in scikit-learn: no download), two "
        "strategies (naive fine-tuning and experience replay), test-then-train and held-out "
        "evaluation, an MLflow run per strategy under one parent, and the accuracy matrices."
    ),
    nbf.v4.new_code_cell(
        "from streamkd.evaluate import run\n"
        "from streamkd.experiment import make_model, make_strategy, make_stream\n"
        "from streamkd.tracking import Tracker\n\n"
        "stream = make_stream('split-digits', seed=0, batch_size=10)\n"
        "stream.describe()"
    ),
    nbf.v4.new_markdown_cell(
        "Each strategy sees every sample once, in order. `run` predicts each batch before "
        "training on it (prequential accuracy) and evaluates on every segment's held-out set "
        "after each segment, which gives the accuracy matrix."
    ),
    nbf.v4.new_code_cell(
        "tracker = Tracker('sqlite:///mlflow.db', experiment='quickstart')\n"
        "parent = tracker.start_run('naive-vs-er', {'stream': 'split-digits'})\n"
        "results = {}\n"
        "for name in ['naive', 'er']:\n"
        "    stream = make_stream('split-digits', seed=0)\n"
        "    strategy = make_strategy(name, make_model(stream, seed=0), memory=200, seed=0)\n"
        "    logger = tracker.start_run(name, strategy.hparams, parent=parent)\n"
        "    result = run(strategy, stream, logger=logger)\n"
        "    logger.log_result(result, step=result['samples'])\n"
        "    logger.end()\n"
        "    results[name] = result\n"
        "parent.end()\n"
        "for name, r in results.items():\n"
        "    print(f\"{name:>6}: final avg acc {r['final_avg_acc']:.3f}  \"\n"
        "          f\"forgetting {r['avg_forgetting']:.3f}  anytime {r['anytime_acc']:.3f}\")"
    ),
    nbf.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n\n"
        "fig, axes = plt.subplots(1, 2, figsize=(9, 4))\n"
        "for ax, (name, r) in zip(axes, results.items()):\n"
        "    ax.imshow(np.array(r['acc_matrix']), vmin=0, vmax=1, cmap='viridis')\n"
        "    for (i, j), v in np.ndenumerate(np.array(r['acc_matrix'])):\n"
        "        ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=8, color='w')\n"
        "    ax.set_title(name)\n"
        "    ax.set_xlabel('evaluated on segment')\n"
        "    ax.set_ylabel('after segment')\n"
        "plt.tight_layout()"
    ),
    nbf.v4.new_code_cell(
        "import mlflow\n\n"
        "mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
        "runs = mlflow.search_runs(experiment_names=['quickstart'])\n"
        "runs[['tags.mlflow.runName', 'metrics.final_avg_acc', 'metrics.avg_forgetting']]"
    ),
    nbf.v4.new_code_cell(
        "# replay must beat fine-tuning, and both runs must be in MLflow\n"
        "assert results['er']['final_avg_acc'] > results['naive']['final_avg_acc'] + 0.2\n"
        "assert len(runs) == 3"
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("quickstart.ipynb"))
