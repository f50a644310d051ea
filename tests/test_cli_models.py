"""`wsicount models` (bundled models with domain and scores) and the train command's help."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wsicount.cli import cli
from wsicount.models import bundled_models


def test_models_lists_every_bundled_model_with_domain_and_benchmark():
    res = CliRunner().invoke(cli, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == list(bundled_models())
    for r in rows:
        assert r["head"] in ("relu", "softplus")
        assert r["domain"]["modality"] in ("fluorescence", "brightfield")
    scored = {r["name"]: r["benchmark"] for r in rows if r["benchmark"]}
    # the models benchmarks/accuracy.py scores carry their held-out scores
    assert {"melanocyte-trp1", "vgg-cells", "adipocyte-he"} <= set(scored)
    assert all(b["n_images"] > 0 and b["mae"] >= 0 for b in scored.values())
    # every calibrated bundled model names its interval methods, its default first
    assert all(r["intervals"] for r in rows) and "ensemble" in dict((r["name"], r["intervals"]) for r in rows)["vgg-cells"]
    text = CliRunner().invoke(cli, ["models"])
    assert text.exit_code == 0 and all(r["name"] in text.output for r in rows)
    assert "intervals: shared" in text.output


def test_train_help_states_the_inferred_defaults():
    res = CliRunner().invoke(cli, ["train", "--help"])
    assert res.exit_code == 0
    out = " ".join(res.output.split())
    assert "--max-minutes" in out and "[default: 40.0" in out
    assert "--precision [auto|fp32|bf16]" in out and "AMX" in out
    assert "nearest-neighbour spacing" in out
