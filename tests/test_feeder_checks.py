"""Feeder validation on load and import: connectivity, finite physical values, shapes, load models."""

from __future__ import annotations

import copy
import json

import pytest

from gridedge_env.network import Feeder, FeederError, from_opendss, load_feeder


@pytest.fixture(scope="module")
def ieee13_dict():
    return load_feeder("ieee13").to_dict()


def _write(tmp_path, data) -> str:
    path = tmp_path / "feeder.json"
    path.write_text(json.dumps(data))  # json writes NaN/Infinity tokens, as a careless tool would
    return str(path)


def _line(data, name):
    return next(ln for ln in data["lines"] if ln["name"] == name)


def test_islanded_feeder_is_refused_on_load_naming_the_buses(tmp_path, ieee13_dict):
    data = copy.deepcopy(ieee13_dict)
    data["lines"] = [ln for ln in data["lines"] if ln["name"] != "650632"]
    with pytest.raises(
        FeederError, match=r"13 buses \(633, 634, 671, .*, \.\.\.\) are not connected to the source bus 'sourcebus'"
    ):
        Feeder.load(_write(tmp_path, data))


def test_islanded_opendss_model_is_refused_on_import(tmp_path):
    feeder = load_feeder("ieee13")
    cut = feeder.replace(lines=tuple(ln for ln in feeder.lines if ln.name != "650632"))
    path = cut.to_opendss(tmp_path / "cut.dss")
    with pytest.raises(FeederError, match=r"cut.dss: 13 buses \(.*\) are not connected to the source bus 'sourcebus'"):
        from_opendss(path)


def test_a_node_without_a_path_to_the_source_is_named(tmp_path, ieee13_dict):
    data = copy.deepcopy(ieee13_dict)
    line = _line(data, "632645")  # a two-phase line (nodes 3, 2): drop one phase of it and its lateral
    for ln in (line, _line(data, "645646")):
        ln["terminal1"]["nodes"], ln["terminal2"]["nodes"] = [3], [3]
        for key in ("r_ohm_per_km", "x_ohm_per_km", "c_nf_per_km"):
            ln[key] = [[ln[key][0][0]]]
    with pytest.raises(FeederError, match=r"2 nodes \(645\.2, 646\.2\) are not connected"):
        Feeder.load(_write(tmp_path, data))


def _set(path):
    def change(data):
        *keys, last = path
        node = data
        for key in keys:
            node = node[key]
        node[last] = change.value

    return change


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("loads", 0, "p_kw"), float("nan"), r"loads\[0\] \(671\)\.p_kw = nan is not a finite number"),
        (("loads", 1, "q_kvar"), float("inf"), r"loads\[1\] .*q_kvar = inf is not a finite number"),
        (("lines", 0, "length_km"), -0.6, r"lines\[0\] \(650632\)\.length_km = -0\.6 must be positive"),
        (("lines", 0, "r_ohm_per_km"), [[0.2]], r"lines\[0\] \(650632\)\.r_ohm_per_km: expected a 3 x 3 matrix"),
        (("loads", 0, "model"), 7, r"loads\[0\] \(671\)\.model = 7 is not one of \[1, 2, 3, 4, 5\]"),
        (("loads", 0, "conn"), "star", r"loads\[0\] \(671\)\.conn = 'star' is not one of"),
        (("loads", 0, "p_exponent"), 1.5, r"p_exponent = 1\.5: the power flow models exponents 0, 1, 2"),
        (("loads", 0, "kv"), 0.0, r"loads\[0\] \(671\)\.kv = 0\.0 must be positive"),
        (("buses", 0, "kv_base_ln"), -1.0, r"buses\[0\] .*kv_base_ln = -1\.0 must be positive"),
        (("transformers", 0, "windings", 0, "kva"), float("nan"), r"windings\[0\]\.kva = nan is not a finite number"),
        (("loads", 0, "terminal", "bus"), "nowhere", r"no bus 'nowhere' in the feeder"),
        (("loads", 1, "name"), "671", r"loads\[1\] \(671\): the name '671' is used twice"),
        (("frequency_hz",), 0, r"frequency_hz = 0\.0 must be positive"),
        (("loads", 0, "phases"), "3", r"loads\[0\] \(671\)\.phases = '3' is not one of"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(tmp_path, ieee13_dict, path, value, message):
    data = copy.deepcopy(ieee13_dict)
    change = _set(path)
    change.value = value
    change(data)
    with pytest.raises(FeederError, match=message):
        Feeder.load(_write(tmp_path, data))


def test_shipped_feeders_pass_validation():
    from gridedge_env.network.checks import validate_feeder

    for name in ("ieee13", "ieee34", "ieee123"):
        validate_feeder(load_feeder(name), name)


def test_make_sim_validates_a_feeder_built_in_code():
    import gridedge_env

    feeder = load_feeder("ieee13")
    cut = feeder.replace(lines=tuple(ln for ln in feeder.lines if ln.name != "650632"))
    with pytest.raises(FeederError, match=r"feeder 'ieee13': 13 buses .* are not connected to the source"):
        gridedge_env.make_sim(feeder=cut, n_agents=6)
