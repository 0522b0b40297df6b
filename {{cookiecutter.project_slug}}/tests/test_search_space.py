"""Hydra's override grammar -> Ray Tune search space: every form, escaping, and clear errors."""

import random
import re

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer

from {{ cookiecutter.package_name }}.tuning.space import SearchSpaceError, build, format_value


def sample(domain, n: int = 200) -> list:
    random.seed(0)
    return [domain.sample() for _ in range(n)]


def test_choice_is_sampled_categorical() -> None:
    space = build(["model.hidden_dim=choice(64,128,256)"])
    domain = space.domains["model.hidden_dim"]
    assert isinstance(domain, Categorical)
    assert set(sample(domain)) == {64, 128, 256}


def test_comma_list_is_every_value() -> None:
    space = build(["model=mlp,cnn"])
    assert space.domains["model"] == tune.grid_search(["mlp", "cnn"])
    assert space.has_grid


def test_trials_are_num_samples_of_every_grid_combination() -> None:
    # What a sweep stopped between trials compares with, to say how many never started.
    assert build(["optimizer.lr=interval(0.001,0.1)"]).num_trials(3) == 3
    space = build(["model=mlp,cnn", "data.batch_size=32,64,128", "optimizer.lr=choice(0.1,0.01)"])
    assert space.num_trials(2) == 2 * 2 * 3


def test_a_space_that_samples_nothing_runs_each_configuration_once() -> None:
    # Repeating a grid with nothing sampled would run the same trials with the same seed.
    grid = build(["model=mlp,cnn", "optimizer.lr=0.1,0.01"])
    assert not grid.samples and grid.repeats(8) == 1 and grid.num_trials(grid.repeats(8)) == 4
    assert build([]).repeats(8) == 1
    # With a sampled key, each pass over the grid draws it anew.
    mixed = build(["model=mlp,cnn", "optimizer.lr=interval(0.001,0.1)"])
    assert mixed.samples and mixed.num_trials(mixed.repeats(8)) == 16


def test_grids_run_in_a_seeded_shuffled_order_when_asked() -> None:
    rates = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    listed = ",".join(map(str, rates))

    def order(line: str, **options) -> list:
        return build([line], **options).domains["optimizer.lr"]["grid_search"]

    shuffled = order(f"optimizer.lr={listed}", shuffle_grid=True, seed=42)
    assert order(f"optimizer.lr={listed}") == rates
    assert sorted(shuffled) == rates and shuffled != rates
    # The same seed gives the same order (a sweep repeats, and resumes); another seed, another.
    assert order(f"optimizer.lr={listed}", shuffle_grid=True, seed=42) == shuffled
    assert order(f"optimizer.lr={listed}", shuffle_grid=True, seed=7) != shuffled
    # Hydra's shuffle() asks for it on one key, whatever the search's setting.
    assert order(f"optimizer.lr=shuffle({listed})", seed=42) == shuffled


def test_range_honours_step_and_exclusive_stop() -> None:
    stepped = build(["model.num_layers=range(1,10,3)"]).domains["model.num_layers"]
    assert set(sample(stepped)) == {1, 4, 7}
    unit = build(["model.num_layers=range(1,4)"]).domains["model.num_layers"]
    assert isinstance(unit, Integer)
    assert set(sample(unit)) == {1, 2, 3}


def test_interval_is_uniform_and_tag_log_is_log_uniform() -> None:
    uniform = build(["model.dropout=interval(0.1,0.5)"]).domains["model.dropout"]
    assert isinstance(uniform, Float) and not isinstance(uniform.sampler, Float._LogUniform)
    assert all(0.1 <= v <= 0.5 for v in sample(uniform))
    log = build(["optimizer.lr=tag(log,interval(1e-4,1e-1))"]).domains["optimizer.lr"]
    assert isinstance(log.sampler, Float._LogUniform)
    values = sample(log, 2000)
    assert all(1e-4 <= v <= 1e-1 for v in values)
    # Log-uniform: about a third of the samples in each decade.
    assert 0.25 < sum(v < 1e-3 for v in values) / len(values) < 0.42


def test_tag_int_interval_includes_both_ends() -> None:
    domain = build(["model.hidden_dim=tag(int,interval(2,4))"]).domains["model.hidden_dim"]
    assert set(sample(domain)) == {2, 3, 4}


def test_fixed_values_pass_through_as_written() -> None:
    space = build(["trainer.max_epochs=3", "+extra.note='a,b'", "search=asha"])
    assert space.fixed == ["trainer.max_epochs=3", "+extra.note='a,b'", "search=asha"]
    assert space.domains == {}


def test_a_single_run_keeps_the_fixed_values_but_the_sweeps_and_hydras() -> None:
    arguments = ["model=cnn", "search=asha", "search.num_samples=2", "hydra.sweep.dir=s", "+n=1"]
    space = build([*arguments, "optimizer.lr=choice(0.1,0.2)"], {"search.x": 1, "seed": 3})
    assert space.run_fixed == ["seed=3", "model=cnn", "+n=1"]


def test_quoted_strings_and_commas_survive_a_round_trip() -> None:
    space = build(["+extra.tag=choice('a,b','c d',plain)"])
    values = set(sample(space.domains["+extra.tag"]))
    assert values == {r"a\,b", r"c\ d", "plain"}  # Hydra's escaping keeps them one value
    parser = OverridesParser.create()
    for value in values:
        (override,) = parser.parse_overrides(space.trial_overrides({"+extra.tag": value}))
        assert not override.is_sweep_override()
        assert override.value() in {"a,b", "c d", "plain"}


def test_escaped_commas_in_values_survive() -> None:
    space = build([r"+extra.tag=choice(a\,b,c)"])
    (value,) = {v for v in sample(space.domains["+extra.tag"]) if "a" in v}
    (override,) = OverridesParser.create().parse_overrides([f"+extra.tag={value}"])
    assert override.value() == "a,b"


def test_trial_overrides_format_each_type() -> None:
    space = build(["trainer.max_epochs=2"])
    assert space.trial_overrides({"a": 1, "b": 0.5, "c": True, "d": None, "e": "x"}) == [
        "trainer.max_epochs=2",
        "a=1",
        "b=0.5",
        "c=true",
        "d=null",
        "e=x",
    ]
    assert format_value([1, 2]) == "[1,2]"


def test_the_space_describes_itself_as_written_and_knows_what_it_varies() -> None:
    params = {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))"}
    space = build(["model.hidden_dim=choice(64,128)", "data=synthetic"], params)
    assert space.describe() == (
        "optimizer.lr=tag(log, interval(1e-4, 1e-1)) model.hidden_dim=choice(64,128)"
    )
    assert space.varies("model") and space.varies("optimizer")
    assert not space.varies("data")  # set, not swept: every trial has it
    assert not space.varies("mod")  # a group, not a prefix of one
    assert build(["model=mlp,cnn"]).varies("model", "data")
    assert build(["+model.extra=1,2"]).varies("model")
    assert build(["trainer.max_epochs=3"]).describe() == "(nothing swept)"


def test_config_params_are_used_and_the_command_line_wins() -> None:
    params = {"optimizer.lr": "interval(0.1,0.2)", "model.hidden_dim": "choice(8,16)"}
    space = build(["model.hidden_dim=32"], params)
    assert isinstance(space.domains["optimizer.lr"], Float)
    assert "model.hidden_dim" not in space.domains
    assert space.fixed == ["model.hidden_dim=32"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("model=glob(*)", "glob() is not supported"),
        ("optimizer.lr=shuffle(choice(1,2))", "a sampled search has no order"),
        ("optimizer.lr=tag(fancy,interval(0,1))", "unsupported tag"),
        ("optimizer.lr=tag(log,interval(0,1))", "needs a start above 0"),
        ("optimizer.lr=interval(1,1)", "needs start < end"),
        ("model.num_layers=range(5,1)", "the range is empty"),
        ("hydra.job.name=a,b", "Hydra's own settings cannot be swept"),
        ("optimizer.lr=choice(", "no viable alternative"),
    ],
)
def test_unsupported_forms_fail_before_anything_runs(override: str, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        build([override])
