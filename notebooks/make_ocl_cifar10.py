"""Writes ocl_cifar10.ipynb (kept as code so its diff stays readable): python make_ocl_cifar10.py"""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Online continual learning on Split CIFAR-10: ER, SCR, PCR, HPCR, OnPro\n\n"
        "A small slice so it runs on a laptop CPU in a couple of minutes: 40 training images "
        "per segment (the full protocol has 10,000), 200 test images per segment, memory 100, "
        "reduced ResNet18 (nf=20), OnPro with 4 rotation copies. The numbers are therefore "
        "far below the papers'; `benchmarks/cifar10_ocl.py` runs the full protocol. Set "
        "`STREAMKD_DATA` to the folder holding `cifar10/`."
    ),
    nbf.v4.new_code_cell(
        "from streamkd.evaluate import run\n"
        "from streamkd.experiment import make_model, make_strategy, make_stream\n\n"
        "SLICE = dict(order='fixed', max_per_segment=40, max_test_per_segment=200)\n"
        "EXTRA = {'onpro': dict(rotations=4, max_replay=16)}\n"
        "results = {}\n"
        "for name in ['er', 'scr', 'pcr', 'hpcr', 'onpro']:\n"
        "    stream = make_stream('split-cifar10', seed=0, **SLICE)\n"
        "    model = make_model(stream, seed=0, strategy=name, nf=20)\n"
        "    strategy = make_strategy(name, model, memory=100, seed=0, **EXTRA.get(name, {}))\n"
        "    results[name] = run(strategy, stream, log_every=50)\n"
        "    r = results[name]\n"
        "    print(f\"{name:>6}: final avg acc {r['final_avg_acc']:.3f}  forgetting \"\n"
        "          f\"{r['avg_forgetting']:.3f}  {r['samples_per_s']:.1f} samples/s\")"
    ),
    nbf.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n\n"
        "fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2))\n"
        "for ax, (name, r) in zip(axes, results.items()):\n"
        "    acc = np.array(r['acc_matrix'])\n"
        "    ax.imshow(acc, vmin=0, vmax=1, cmap='viridis')\n"
        "    for (i, j), v in np.ndenumerate(acc):\n"
        "        ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7, color='w')\n"
        "    ax.set_title(name)\n"
        "    ax.set_xlabel('segment')\n"
        "plt.tight_layout()"
    ),
    nbf.v4.new_code_cell(
        "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
        "for name, r in results.items():\n"
        "    pts = np.array(r['anytime'])\n"
        "    ax.plot(pts[:, 0], pts[:, 1], 'o-', label=name)\n"
        "ax.set_xlabel('samples seen')\n"
        "ax.set_ylabel('held-out accuracy, seen segments')\n"
        "ax.legend()\n"
        "plt.tight_layout()"
    ),
    nbf.v4.new_code_cell(
        "# every strategy produced a full accuracy matrix with valid accuracies\n"
        "for r in results.values():\n"
        "    assert len(r['acc_matrix']) == 5\n"
        "    assert all(0 <= v <= 1 for row in r['acc_matrix'] for v in row)"
    ),
]
nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("ocl_cifar10.ipynb"))
