"""`gridedge tune`: every learner gets the same number of configurations from a search space its config accepts;
the choice rule; GradMA is GradMAP with K = 1 and no trust region (default suite); a tiny tuning through the
command line and into `gridedge compare --tuned` (integration tier)."""

from __future__ import annotations

import json

import pytest

from gradmap_agent import gradma_config, gradmap_config
from gradmap_agent.config import flatten_config
from gridedge_run.cli import main
from gridedge_run.compare import TRAINED_METHODS
from gridedge_run.methods import TRAIN_METHODS
from gridedge_run.tune import SEARCH_SPACES, _choose, chosen_settings, draw_configs


def test_every_learner_has_a_search_space_its_config_accepts():
    assert set(SEARCH_SPACES) == set(TRAINED_METHODS)
    for method, space in SEARCH_SPACES.items():
        configs = draw_configs(method, 6)
        assert len(configs) == 6 and configs[0] == {}  # the defaults first, then 5 distinct draws
        assert len({json.dumps(c, sort_keys=True) for c in configs}) == 6
        assert configs == draw_configs(method, 6)  # the same draws on every rerun
        for fields in configs:
            assert set(fields) <= set(space)
            TRAIN_METHODS[method].make_config(**fields)  # every value is valid for the method


def test_shared_tricks_are_tuned_for_every_gradient_learner():
    shared = {"lr", "voltage_margin_pu", "voltage_quadratic", "normalize_obs", "max_grad_norm", "lr_schedule"}
    shared |= {"init_log_std", "hard_scenario_share", "policy_average", "bptt_window"}
    for method in ("gradmap", "gradma", "ssl", "ssl-penalty"):
        assert shared <= set(SEARCH_SPACES[method]), method
    assert set(SEARCH_SPACES["gradmap"]) - set(SEARCH_SPACES["gradma"]) == {"reuse", "clip_radius"}


def test_gradma_differs_from_gradmap_only_in_k_and_the_trust_region():
    a, b = flatten_config(gradmap_config()), flatten_config(gradma_config())
    differ = {k for k in a if a[k] != b[k]}
    # K = 1 is one update on the whole rollout: one minibatch
    assert differ == {"reuse", "clip_radius", "minibatches"}
    assert (b["reuse"], b["clip_radius"], b["minibatches"]) == (1, None, 1)


def test_choice_is_the_cheapest_within_the_violation_target_else_the_least_violating():
    rows = [
        {"cost": 100.0, "violation_share": 0.02},
        {"cost": 300.0, "violation_share": 0.004},
        {"cost": 250.0, "violation_share": 0.005},
    ]
    assert _choose(rows) == 2
    assert _choose([rows[0], {"cost": 900.0, "violation_share": 0.01}]) == 1


def test_bad_arguments(tmp_path, capsys):
    assert main(["tune", "--methods", "nope", "--out", str(tmp_path / "t")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["tune", "--configs", "0", "--methods", "gradmap", "--out", str(tmp_path / "t")]) == 2
    assert "--configs must be >= 1" in capsys.readouterr().err
    assert main(["tune", "--jobs", "0", "--methods", "gradmap", "--out", str(tmp_path / "t")]) == 2
    assert "--jobs must be a positive integer" in capsys.readouterr().err
    page = tmp_path / "page.md"
    page.write_text("<!-- results:paper:begin -->\n<!-- results:paper:end -->\n")  # compare's markers, not tune's
    assert main(["tune", "--methods", "gradmap", "--snippet", str(page), "--out", str(tmp_path / "t2")]) == 2
    assert "results:tune-paper:begin" in capsys.readouterr().err
    assert not (tmp_path / "t2").exists()  # the error comes before any tuning
    with pytest.raises(ValueError, match="no tune.json"):
        chosen_settings(tmp_path)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_tune_writes_its_table_and_compare_uses_the_choice(tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["tune", "--preset", "smoke", "--methods", "gradmap", "ssl", "--configs", "2", "--seeds", "0"]
    assert main([*args, "--minutes", "0.05", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for method in ("gradmap", "ssl"):
        tuned = result["methods_tuned"][method]
        assert len(tuned["configs"]) == 2 and tuned["chosen"] in (0, 1)
        for row in tuned["configs"]:
            assert row["iterations"] >= 1 and 0 <= row["violation_share"] <= 1
    table = (out / "tune.md").read_text()
    assert table.count("| gradmap |") == 2 and table.count("| ssl |") == 2
    assert (out / "tune.csv").read_text().count("\n") == 5
    chosen = chosen_settings(out)
    assert chosen["gradmap"] == tuple(result["methods_tuned"]["gradmap"]["set"])
    # on the finished directory --snippet only copies the table (without tune.md's title) between the markers
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- results:tune-smoke:begin -->\nold\n<!-- results:tune-smoke:end -->\nafter\n")
    assert main([*args, "--minutes", "0.05", "--out", str(out), "--snippet", str(page), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["methods_tuned"] == result["methods_tuned"]
    snippet = (out / "tune_snippet.md").read_text()
    # the rerun rewrote tune.md too (its provenance line carries the rerun's minute)
    assert (out / "tune.md").read_text() == "# gridedge tune --preset smoke\n\n" + snippet
    assert (
        page.read_text()
        == f"before\n<!-- results:tune-smoke:begin -->\n{snippet}<!-- results:tune-smoke:end -->\nafter\n"
    )
