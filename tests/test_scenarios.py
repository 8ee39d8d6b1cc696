"""Scenarios: shapes, units, provenance of the shipped profiles, split, load draws, errors."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gridedge_env.scenarios as scenarios
from gridedge_env.scenarios import (
    N_DAYS,
    SCENARIO_STEP_MINUTES,
    STEPS_PER_DAY,
    ScenarioData,
    draw_load_shapes,
    load_scenario_data,
    split_days,
    split_profiles,
)
from gridedge_env.scenarios.build_profiles import DEFAULT_OUTPUT, build_profiles_text, main
from gridedge_env.scenarios.days import month_of_day

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCE_PROFILES = SHARED_DATA / "household_profiles_1min"
SUMMER = np.isin(month_of_day(np.arange(1, N_DAYS + 1)), (6, 7, 8))
WINTER = np.isin(month_of_day(np.arange(1, N_DAYS + 1)), (12, 1, 2))


@pytest.fixture(scope="module")
def data() -> ScenarioData:
    return load_scenario_data()


def test_constants():
    assert SCENARIO_STEP_MINUTES == 30
    assert STEPS_PER_DAY == 48


def test_shapes_and_dtypes(data):
    d, t = N_DAYS, STEPS_PER_DAY
    for name in ("temperature_c", "ghi_w_per_m2", "pv_kw_per_kwp", "price_per_kwh", "export_price_per_kwh"):
        value = getattr(data, name)
        assert value.shape == (d, t), name
        assert value.dtype == torch.float64, name
        assert torch.isfinite(value).all(), name
    assert data.household_kw.shape == (100, t)
    assert data.household_shape.shape == (100, t)
    assert data.day_of_year.dtype == torch.int64
    assert data.day_of_year.tolist() == list(range(1, N_DAYS + 1))
    assert (data.n_days, data.steps_per_day, data.n_profiles) == (N_DAYS, t, 100)


def test_cached(data):
    assert load_scenario_data() is data
    assert load_scenario_data(30) is data


@pytest.mark.parametrize("step_minutes", [15, 60])
def test_other_step_lengths(data, step_minutes):
    other = load_scenario_data(step_minutes)
    t = 1440 // step_minutes
    assert other.step_minutes == step_minutes
    assert other.pv_kw_per_kwp.shape == (N_DAYS, t)
    assert other.household_kw.shape == (100, t)
    assert torch.allclose(other.household_shape.amax(dim=1), torch.ones(100, dtype=torch.float64))
    # Daily energy of the household profiles does not depend on the step length.
    hours = step_minutes / 60
    assert torch.allclose(other.household_kw.sum(1) * hours, data.household_kw.sum(1) * 0.5)
    # Yearly PV energy is nearly the same at every step length.
    # floats: pytest >= 9.2's approx iterates over a 0-d tensor and fails
    assert float(other.pv_kw_per_kwp.sum()) * hours == pytest.approx(float(data.pv_kw_per_kwp.sum()) * 0.5, rel=0.02)


def test_to_casts_floats_only(data):
    f32 = data.to(torch.float32)
    assert f32.pv_kw_per_kwp.dtype == torch.float32
    assert f32.household_shape.dtype == torch.float32
    assert f32.day_of_year.dtype == torch.int64
    assert f32.step_minutes == data.step_minutes
    assert data.pv_kw_per_kwp.dtype == torch.float64  # the cached original is untouched
    moved = data.to(device="cpu")
    assert moved.temperature_c.dtype == torch.float64


def test_temperature_plausible_for_greensboro(data):
    temp = data.temperature_c
    assert -20.0 < float(temp.min()) < -5.0
    assert 30.0 < float(temp.max()) < 42.0
    assert temp[torch.as_tensor(SUMMER)].mean() > temp[torch.as_tensor(WINTER)].mean() + 15.0


def test_ghi_plausible(data):
    ghi = data.ghi_w_per_m2
    assert float(ghi.min()) >= 0.0
    assert float(ghi.max()) < 1_200.0
    assert float(ghi[:, 0].max()) == 0.0  # 00:00-00:30
    assert float(ghi[:, STEPS_PER_DAY - 1].max()) == 0.0  # 23:30-24:00
    noon = STEPS_PER_DAY // 2
    assert float(ghi[torch.as_tensor(SUMMER), noon].max()) > 500.0


def test_pv_plausible(data):
    pv = data.pv_kw_per_kwp
    assert float(pv.min()) >= 0.0
    assert float(pv.max()) <= 1.1
    assert 0.6 < float(pv.max())
    assert float(pv[:, :8].max()) == 0.0  # before 04:00
    assert float(pv[:, 44:].max()) == 0.0  # after 22:00
    daily_kwh = pv.sum(dim=1) * 0.5
    assert daily_kwh[torch.as_tensor(SUMMER)].mean() > 1.3 * daily_kwh[torch.as_tensor(WINTER)].mean()
    capacity_factor = float(pv.mean())
    assert 0.10 < capacity_factor < 0.22
    # PV follows the irradiance: no output without sunlight.
    assert float(pv[data.ghi_w_per_m2 == 0].max()) == 0.0


def test_price_positive_with_evening_peak(data):
    price = data.price_per_kwh
    assert float(price.min()) > 0.0
    hour = torch.arange(STEPS_PER_DAY) * 0.5
    evening = (hour >= 16) & (hour < 21)
    assert (price[:, evening].amin(dim=1) > price[:, ~evening].amax(dim=1)).all()
    assert torch.all(price.argmax(dim=1) == 32)  # first step of the peak, 16:00
    assert float(price[0, 0]) == pytest.approx(0.09)
    assert float(price[180, 34]) == pytest.approx(0.40)  # summer peak (Jun 30, 17:00)
    assert float(price[0, 34]) == pytest.approx(0.30)
    assert torch.all(data.export_price_per_kwh == 0.05)
    assert float(data.export_price_per_kwh.max()) < float(price.min())


def test_household_profiles_plausible(data):
    kw = data.household_kw
    assert float(kw.min()) >= 0.0
    assert 0.1 < float(kw.mean()) < 1.0  # a household averages a few hundred watts
    assert float(kw.max()) < 15.0
    shape = data.household_shape
    assert torch.allclose(shape.amax(dim=1), torch.ones(100, dtype=torch.float64))
    assert torch.allclose(shape * kw.amax(dim=1, keepdim=True), kw)


def test_shipped_profiles_file_has_provenance():
    text = DEFAULT_OUTPUT.read_text(encoding="utf-8")
    assert "IEEE PES European Low Voltage Test Feeder" in text
    assert "Electric Power Research Institute" in text
    assert "python -m gridedge_env.scenarios.build_profiles" in text


@pytest.mark.skipif(not SOURCE_PROFILES.is_dir(), reason=f"source profiles not found at {SOURCE_PROFILES}")
def test_shipped_profiles_match_fresh_derivation(tmp_path):
    fresh = build_profiles_text(SOURCE_PROFILES)
    assert fresh == DEFAULT_OUTPUT.read_text(encoding="utf-8")
    out = tmp_path / "profiles.csv"
    main(["--source", str(SOURCE_PROFILES), "--output", str(out)])
    assert out.read_text(encoding="utf-8") == fresh
    # Numerically: the shipped half-hour means are the means of the source minutes.
    source = np.stack([np.loadtxt(SOURCE_PROFILES / f"load_profile_{k}.txt") for k in range(1, 101)])
    source = source.reshape(100, 48, 30)
    shipped = load_scenario_data().household_kw.numpy()
    np.testing.assert_allclose(shipped, source.mean(axis=-1), atol=1e-6, rtol=0)


def test_build_profiles_rejects_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_profiles_text(tmp_path / "nowhere")
    (tmp_path / "load_profile_1.txt").write_text("0.1\n" * 1440)
    with pytest.raises(FileNotFoundError, match="load_profile_2.txt"):
        build_profiles_text(tmp_path)


def test_split_disjoint_and_exhaustive():
    train, validation, test = split_days("train"), split_days("validation"), split_days("test")
    every = split_days("all")
    parts = [set(x.tolist()) for x in (train, validation, test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert sorted(np.concatenate([train, validation, test]).tolist()) == list(range(N_DAYS))
    assert every.tolist() == list(range(N_DAYS))
    assert (len(train), len(validation), len(test)) == (225, 70, 70)
    assert train.dtype == np.int64
    # whole weeks: a validation or test day's whole week (d // 7) belongs to the same split
    for days in (validation, test):
        weeks = np.unique(days // 7)
        whole = (weeks[:, None] * 7 + np.arange(7)).ravel()
        assert len(weeks) == 10 and sorted(days.tolist()) == sorted(whole.tolist())
    # no test week touches a training day of the same week
    assert set((test // 7).tolist()).isdisjoint((train // 7).tolist())
    # every season is held out: test weeks fall in 10 different months, spread over the year
    months = set(month_of_day(test + 1).tolist())
    assert len(months) >= 9 and {1, 4, 7, 10} & months


def test_split_profiles_disjoint():
    parts = {name: split_profiles(name, 100) for name in ("train", "validation", "test")}
    assert {name: len(p) for name, p in parts.items()} == {"train": 60, "validation": 20, "test": 20}
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
    assert set(parts["test"].tolist()).isdisjoint(parts["train"].tolist())
    assert split_profiles("all", 100).tolist() == list(range(100))
    with pytest.raises(ValueError, match="at least 5"):
        split_profiles("train", 4)


def test_draw_load_shapes_uses_only_the_given_profiles(data):
    pool = split_profiles("test", data.n_profiles)
    days = torch.zeros(40, dtype=torch.int64)
    shapes = draw_load_shapes(data, days, n_loads=25, generator=torch.Generator().manual_seed(0), profiles=pool)
    unscaled = shapes / shapes.amax(dim=1, keepdim=True)
    rows = unscaled.permute(0, 2, 1).reshape(-1, STEPS_PER_DAY)
    distance = (rows[:, None, :] - data.household_shape[None, :, :]).abs().amax(dim=-1)  # [rows, P]
    used = set(distance.argmin(dim=1).tolist())
    assert used <= set(pool.tolist()) and len(used) == len(pool)
    with pytest.raises(ValueError, match="profiles"):
        draw_load_shapes(data, days, 3, torch.Generator().manual_seed(0), profiles=[100])


def test_split_returns_copies():
    days = split_days("test")
    days[:] = 0
    assert split_days("test")[0] == 28


@pytest.mark.parametrize("bad", ["valid", "Train", "", None])
def test_split_unknown(bad):
    with pytest.raises(ValueError, match=r"unknown split .*'train', 'validation', 'test', 'all'"):
        split_days(bad)


def test_draw_load_shapes_shape_and_values(data):
    days = torch.as_tensor(split_days("test")[:6])
    shapes = draw_load_shapes(data, days, n_loads=7, generator=torch.Generator().manual_seed(0))
    assert shapes.shape == (6, STEPS_PER_DAY, 7)
    assert shapes.dtype == torch.float64
    assert float(shapes.min()) > 0.0
    # Each column is one household shape times one positive scale.
    scale = shapes.amax(dim=1)  # [B, L]
    unscaled = shapes / scale[:, None, :]
    rows = unscaled.permute(0, 2, 1).reshape(-1, STEPS_PER_DAY)
    distance = (rows[:, None, :] - data.household_shape[None, :, :]).abs().amax(dim=-1).amin(dim=1)
    assert float(distance.max()) < 1e-12


def test_draw_load_shapes_scale_statistics(data):
    days = torch.zeros(400, dtype=torch.int64)
    shapes = draw_load_shapes(data, days, n_loads=50, generator=torch.Generator().manual_seed(3))
    log_scale = shapes.amax(dim=1).log()
    assert float(log_scale.std()) == pytest.approx(scenarios.LOAD_SCALE_SIGMA, rel=0.05)
    assert float(log_scale.exp().mean()) == pytest.approx(1.0, abs=0.01)


def test_draw_load_shapes_deterministic(data):
    days = torch.tensor([0, 4, 100, 364])
    a = draw_load_shapes(data, days, 5, torch.Generator().manual_seed(42))
    b = draw_load_shapes(data, days, 5, torch.Generator().manual_seed(42))
    c = draw_load_shapes(data, days, 5, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_draw_load_shapes_follows_data_dtype(data):
    shapes = draw_load_shapes(data.to(torch.float32), torch.tensor([1]), 2, torch.Generator().manual_seed(0))
    assert shapes.dtype == torch.float32


def test_draw_load_shapes_empty_batch(data):
    shapes = draw_load_shapes(data, torch.zeros(0, dtype=torch.int64), 3, torch.Generator().manual_seed(0))
    assert shapes.shape == (0, STEPS_PER_DAY, 3)


@pytest.mark.parametrize("n_loads", [0, -1, 2.5, True])
def test_draw_load_shapes_bad_n_loads(data, n_loads):
    with pytest.raises(ValueError, match="n_loads"):
        draw_load_shapes(data, torch.tensor([0]), n_loads, torch.Generator())


@pytest.mark.parametrize("day", [-1, 365, 1000])
def test_draw_load_shapes_day_out_of_range(data, day):
    with pytest.raises(ValueError, match=rf"day index {day} out of range 0\.\.364"):
        draw_load_shapes(data, torch.tensor([0, day]), 2, torch.Generator())


def test_draw_load_shapes_bad_day_tensor(data):
    with pytest.raises(ValueError, match="1-D integer"):
        draw_load_shapes(data, torch.tensor([0.0, 1.0]), 2, torch.Generator())
    with pytest.raises(ValueError, match="1-D integer"):
        draw_load_shapes(data, torch.tensor([[0, 1]]), 2, torch.Generator())


@pytest.mark.parametrize("step_minutes", [0, 5, 45, 120, 30.5, "30", True])
def test_unsupported_step_minutes(step_minutes):
    with pytest.raises(ValueError, match=r"unsupported step_minutes=.*\[15, 30, 60\]"):
        load_scenario_data(step_minutes)


def test_docs_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, "docs/data.md", "exec"), namespaces[-1])
    assert namespaces[0]["shapes"].shape == (8, STEPS_PER_DAY, 91)
    # what the page says of the splits' household sets: the test episodes' peak load lies above almost every
    # training episode's, and validation's below
    peak_kw = namespaces[1]["peak_kw"]
    assert np.percentile(peak_kw["test"], 10) > np.percentile(peak_kw["train"], 90)
    assert np.median(peak_kw["validation"]) < np.median(peak_kw["train"]) < np.median(peak_kw["test"])


def test_docstring_example_runs():
    result = doctest.testmod(scenarios, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
