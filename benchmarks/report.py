"""results.json as a markdown table (results.md, and the README's Benchmarks section)."""

from typing import Any


def _n(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _met(flag: Any) -> str:
    return "yes" if flag else "**no**"


def _sweep_rows(sweeps: dict, label: str) -> list[str]:
    run, goals = sweeps["runs"][0], sweeps["goals"]
    count = len(sweeps["configurations"])
    schedule = run["schedule"] or {}
    return [
        f"| {label} sweep of {count} lrs x {sweeps['epochs']} epochs, wall s | ASHA "
        f"{_n(run['asha_wall_s'])} | basic multirun {_n(run['basic_wall_s'])} | "
        f"{_n(sweeps['speedup_asha_vs_basic'], 2, 'x')} faster | >= 2x faster | "
        f"{_met(goals['speedup >= 2x'])} |",
        f"| trial-epochs | {run['asha_trial_epochs']} | {run['basic_trial_epochs']} | "
        f"{_n(sweeps['trial_epochs_ratio'], 2, 'x')} | <= 0.5x | "
        f"{_met(goals['trial-epochs <= 0.5x'])} |",
        f"| best val_acc, % | {_n(100 * (run['asha_best_val_acc'] or float('nan')))} | "
        f"{_n(100 * run['basic_best_val_acc'])} | "
        f"{_n(sweeps['best_val_acc_gap_points'], 1)} points lower | within 1 point | "
        f"{_met(goals['best val_acc within 1 point'])} |",
        f"| trials' span vs ideal {sweeps['parallel_slots']}-slot schedule, s | "
        f"{_n(schedule.get('trials_span_s'))} | ideal {_n(schedule.get('ideal_s'))} | "
        f"{_n(sweeps['schedule_ratio'], 2, 'x')} | <= 1.2x | "
        f"{_met(goals['schedule <= 1.2x ideal'])} |",
    ]


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['gpus']} GPUs, "
        f"{info['memory_gb']} GiB; Python {info['python']}, torch {info['torch']}, "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + f". {results['date']}, median of {results['settings']['repeats']} repeats"
        + f" (sweeps: {results['settings']['sweep_repeats']}).",
        "",
        "| benchmark | generated project | alternative | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    bench = results["benchmarks"]
    errors = []
    for name, result in bench.items():
        if "error" in result:
            errors.append(f"- {name}: failed: `{result['error'].splitlines()[0]}`")
    training = bench.get("training", {})
    if "median_samples_per_s" in training:
        m, r = training["median_samples_per_s"], training["ratio_vs_plain_lightning"]
        lines.append(
            f"| 1. training throughput, samples/s after {training['warmup_epochs']} warm-up "
            f"epochs | {_n(m['project'], 0)} | plain Lightning {_n(m['plain_lightning'], 0)} | "
            f"{_n(r['project'], 2, 'x')} | >= 0.9x | {_met(training['goal_met'])} |"
        )
        lines.append(
            f"| | | raw PyTorch loop {_n(m['raw_torch'], 0)} | "
            f"{_n(m['project'] / m['raw_torch'] if m['raw_torch'] else None, 2, 'x')} | | |"
        )
        lines.append(
            f"| | before: Ray's 2 s report polling {_n(m['project_ray_default_poll'], 0)} | "
            f"plain Lightning | {_n(r['project_ray_default_poll'], 2, 'x')} | | |"
        )
        long = training.get("long_epochs")
        if long:
            m, r = long["median_samples_per_s"], long["ratio_vs_plain_lightning"]
            lines.append(
                f"| 1b. the same with long epochs (`{long['data']}`) | {_n(m['project'], 0)} | "
                f"plain Lightning {_n(m['plain_lightning'], 0)} | {_n(r['project'], 2, 'x')} | "
                f">= 0.9x | {_met(long['goal_met'])} |"
            )
    overhead = bench.get("overhead", {})
    if "median_wall_s" in overhead:
        m, r = overhead["median_wall_s"], overhead["ratio_vs_plain_lightning"]
        lines.append(
            f"| 2. 1-epoch run, wall s | {_n(m['project'])} | plain Lightning "
            f"{_n(m['plain_lightning'])} | {_n(r['project'], 2, 'x')} | <= 2.5x | "
            f"{_met(overhead['goal_met'])} |"
        )
        lines.append(
            f"| | before: Ray's 2 s report polling {_n(m['project_ray_default_poll'])} | "
            f"plain Lightning | {_n(r['project_ray_default_poll'], 2, 'x')} | | |"
        )
        if "project_running_cluster" in m:
            lines.append(
                f"| | joining a running cluster (`ray start --head`) "
                f"{_n(m['project_running_cluster'])} | plain Lightning | "
                f"{_n(r['project_running_cluster'], 2, 'x')} | | |"
            )
        floors = {
            "ray_train_floor": "Ray Train's floor: a TorchTrainer run that only reports",
            "ray_train_floor_lightning": "the floor, its worker importing Lightning",
            "ray_train_floor_lightning_running_cluster": "the same, joining a running cluster",
        }
        for key, label in floors.items():
            if key in m:
                lines.append(
                    f"| | {label} {_n(m[key])} | plain Lightning | {_n(r[key], 2, 'x')} | | |"
                )
    sweeps = bench.get("sweeps", {})
    if "runs" in sweeps:
        lines += _sweep_rows(sweeps, "3.")
        labels = {"long_epochs": "3b. with long", "longer_epochs": "3c. with longer"}
        extra = {key: v["rows"] for key, v in sweeps.items() if isinstance(v, dict) and "rows" in v}
        for (key, rows), letter in zip(extra.items(), "defghijk", strict=False):  # --sweep-rows
            labels[key] = f"3{letter}. with {rows:,}-row"
        for key, label in labels.items():
            if "runs" in sweeps.get(key, {}):
                lines += _sweep_rows(sweeps[key], f"{label} epochs (`{sweeps[key]['data']}`):")
    serving = bench.get("serving", {})
    if "by_concurrency" in serving:
        for concurrency, row in serving["by_concurrency"].items():
            s, f = row["ray_serve"], row["fastapi"]
            goal = ">= 0.5x" if concurrency == "1" else ">= 1x"
            met = serving["goals"][f"concurrency {concurrency}: {goal}"]
            lines.append(
                f"| 4. serving, concurrency {concurrency}: req/s (p50 / p99 ms) | Ray Serve "
                f"{_n(s['requests_per_s'], 0)} ({_n(s['p50_ms'])} / {_n(s['p99_ms'])}) | "
                f"FastAPI + uvicorn {_n(f['requests_per_s'], 0)} ({_n(f['p50_ms'])} / "
                f"{_n(f['p99_ms'])}) | {_n(row['throughput_ratio'], 2, 'x')} | {goal} | "
                f"{_met(met)} |"
            )
    tmpl = bench.get("template", {})
    if "median_generation_s" in tmpl:
        lines.append(
            f"| 5. template: generate a project, s | {_n(tmpl['median_generation_s'], 2)} | | | | |"
        )
        lines.append(
            f'| project tests (`-m "not slow"`), s | {_n(tmpl["project_quick_tests_s"])} | | | | |'
        )
        if "project_all_tests_s" in tmpl:
            lines.append(f"| project tests (all), s | {_n(tmpl['project_all_tests_s'])} | | | | |")
    if "median_phases_s" in overhead:
        lines += ["", "1-epoch run, where the time goes (median s):", ""]
        for name, phases in overhead["median_phases_s"].items():
            parts = ", ".join(f"{key} {_n(value)}" for key, value in phases.items())
            lines.append(f"- {name}: {parts}")
    if errors:
        lines += ["", *errors]
    return "\n".join(lines) + "\n"
