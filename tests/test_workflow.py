"""End-to-end runs of the Snakemake workflow on a tiny demo configuration.

One working directory is shared by the tests of this module, in order: a run killed part-way,
its restart (finished jobs are not redone), a second run with nothing to do, then dry runs
after a parameter change (only the affected stages are planned).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.tables import COMPARISON
from tests.workflow_runs import ROOT, SENTINEL, SENTINEL_TEXT, TINY, TINY_RESULTS, snakemake

pytestmark = pytest.mark.slow

UPSTREAM_OF_REFINEMENT = {"demo_data", "index", "init_model", "cluster_intra", "train_intra"}


def planned_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans."""
    jobs, rule = [], None
    for line in (result.stdout + result.stderr).splitlines():
        match = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line.strip())
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.append((rule, line.split(":", 1)[1].strip().split(",")[0]))
            rule = None
        elif rule and line.strip().startswith("jobid:") and rule == "all":
            jobs.append((rule, ""))
            rule = None
    return jobs


def write_config(workdir: Path, name: str, change) -> Path:
    config = yaml.safe_load(TINY.read_text())
    change(config)
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_killed_run_restarts_without_redoing_finished_jobs(tiny_workflow):
    results = tiny_workflow.results
    assert tiny_workflow.stamps_before_kill == tiny_workflow.stamps_after_restart, (
        "finished jobs were redone"
    )
    comparison = COMPARISON.read(results / "comparison.csv")
    assert comparison["experiment"].tolist() == ["initial", "baseline", "calr"]
    assert comparison[["mAP_mean", "rank1_mean"]].notna().all().all()
    assert comparison["verdict"].iloc[1] == "baseline"
    assert comparison["interval_over"].iloc[2] == "query identities only (one seed)"
    assert (results / "comparison.txt").read_text() in tiny_workflow.restart_output, (
        "the run should end with the comparison table"
    )
    for exp in ("baseline", "calr"):
        for figure in ("curves", "cluster_quality", "tsne_cameras", "retrieval"):
            assert (results / exp / "seed0" / "report" / f"{figure}.png").stat().st_size > 0


def test_paths_with_spaces_quotes_and_semicolons_are_quoted(tiny_workflow):
    """The run's results folder and dataset root hold a space, quotes and a semicolon; the file
    that unquoted commands would truncate is untouched and nothing escaped the folder."""
    assert (tiny_workflow.workdir / SENTINEL).read_text() == SENTINEL_TEXT
    assert sorted(p.name for p in (tiny_workflow.workdir / SENTINEL).parent.iterdir()) == sorted(
        [SENTINEL.name, TINY_RESULTS.name]
    )
    assert (tiny_workflow.results / "demo-data").is_dir()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"results": "/"}, "cannot be the filesystem root"),
        ({"results": ""}, "key results: '' should be non-empty"),
        ({"results": str(ROOT / "pipeline")}, "inside the project's own folders"),
        ({"experiments": {"shared": {}}}, "experiment name(s) shared are the workflow's own"),
        # the profile's gpu: 1 would cap the job's request without a word
        (
            {"device": "cuda", "inter": {"train": {"gpus": 2}}},
            "train.gpus 2 but this run may use 1 GPU(s)",
        ),
    ],
)
def test_unsafe_results_folders_and_reserved_experiment_names_are_refused(
    tmp_path, change, message
):
    config = yaml.safe_load(TINY.read_text()) | change
    path = tmp_path / "unsafe.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path), "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Invalid configuration" in output
    assert message in output


def test_second_run_has_nothing_to_do(tiny_workflow):
    result = snakemake(tiny_workflow.workdir, "--configfile", str(TINY), "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_the_report_shows_the_comparison_in_the_page(tiny_workflow):
    """Snakemake's HTML report shows an image, HTML or PDF result in the page when its eye icon
    is clicked, and offers any other file, such as a CSV, only as a download link (which a
    browser opens as nothing): the Comparison entries are an HTML page holding the tables, and
    the replicates plot."""
    workdir = tiny_workflow.workdir
    snakemake(workdir, "--configfile", str(TINY), "--report", "report.html")
    page = (workdir / "report.html").read_text()
    results = json.loads(re.search(r"var results = (\{.*\});\n", page).group(1))
    compared = {
        Path(path).name: entry
        for path, entry in results.items()
        if entry["job_properties"]["rule"] == "compare"
    }
    assert {name: entry["mime_type"] for name, entry in compared.items()} == {
        "comparison.html": "text/html",
        "replicates.png": "image/png",
    }
    shown = base64.b64decode(compared["comparison.html"]["data_uri"].split(",", 1)[1]).decode()
    assert shown.startswith("<!DOCTYPE html>") and "<th>Verdict</th>" in shown
    assert "<td>calr</td>" in shown


def test_refinement_change_reruns_refinement_and_downstream_only(tiny_workflow):
    workdir = tiny_workflow.workdir
    config = write_config(
        workdir, "refine.yaml", lambda c: c["inter"].setdefault("refine", {}).update(p0=0.5)
    )
    jobs = planned_jobs(snakemake(workdir, "--configfile", str(config), "-n"))
    rules = {rule for rule, _ in jobs}
    assert "refine" in rules and "train_inter" in rules
    assert not rules & UPSTREAM_OF_REFINEMENT
    # the baseline does not refine: none of its outputs is planned
    assert all("/baseline/" not in output for _, output in jobs), jobs
    # round 0's global clusters are upstream of round 0's refinement
    assert ("cluster_global", f"{TINY_RESULTS}/calr/seed0/round0/clusters.csv") not in jobs
    assert not any(rule == "extract" and "model_init" in output for rule, output in jobs)


def test_evaluation_change_reruns_evaluation_and_report_only(tiny_workflow):
    workdir = tiny_workflow.workdir
    config = write_config(workdir, "evaluate.yaml", lambda c: c.update(evaluate={"max_rank": 20}))
    result = snakemake(workdir, "--configfile", str(config), "-n")
    assert {rule for rule, _ in planned_jobs(result)} == {"evaluate", "compare", "report", "all"}


def test_batchnorm_calibration_remakes_the_initial_model_from_the_index(tiny_workflow):
    workdir = tiny_workflow.workdir
    config = write_config(
        workdir, "calibrated.yaml", lambda config: config["model"].update(calibrate_bn=True)
    )
    result = snakemake(workdir, "--configfile", str(config), "-n")
    rules = {rule for rule, _ in planned_jobs(result)}
    assert "init_model" in rules and "train_intra" in rules
    assert not rules & {"demo_data", "index"}
    assert re.search(
        r"pipeline init-model .*--calibrate-bn --calibration-images 4096 .*"
        r"--calibrate-index .+/index\.csv",  # quoted: the results folder holds a space
        result.stdout,
    )
    plain = snakemake(workdir, "--configfile", str(TINY), "-n", "--forcerun", "init_model")
    assert "pipeline init-model" in plain.stdout and "--calibrate-index" not in plain.stdout


def test_config_typo_is_a_clear_error(tiny_workflow):
    workdir = tiny_workflow.workdir
    config = write_config(workdir, "typo.yaml", lambda c: c["inter"].update(refien={}))
    result = snakemake(workdir, "--configfile", str(config), "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Invalid configuration" in output
    assert "'refien' was unexpected" in output


def test_the_baseline_must_be_compared(tmp_path):
    config = write_config(tmp_path, "baseline.yaml", lambda c: c.update(compare={"baseline": "x"}))
    result = snakemake(tmp_path, "--configfile", str(config), "-n", check=False)
    assert result.returncode != 0
    assert (
        "compare.baseline 'x' is none of the experiments (baseline, calr) nor 'initial'"
        in result.stdout + result.stderr
    )


def test_a_config_file_replaces_the_demo_config(tmp_path):
    """config.yaml is the demo: keys a --configfile leaves out take the schema's defaults, not
    the demo's (lambda 0.1, weight floor 0.5, k 6 in config.yaml; 1.0, 0.0, 15 in the schema)."""
    config = yaml.safe_load(TINY.read_text())
    del config["inter"]["clusterer"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(config))
    planned = snakemake(tmp_path, "--configfile", str(path), "-n").stdout
    assert "--grl-lambda 1.0" in planned and "--grl-lambda 0.1" not in planned
    assert "--weight-floor 0.0" in planned and "--k 15" in planned
    demo = snakemake(tmp_path, "--configfile", str(TINY.parents[2] / "config.yaml"), "-n").stdout
    assert "--grl-lambda 0.1" in demo and "--weight-floor 0.5" in demo and "--k 6" in demo


def write_index(workdir: Path) -> None:
    """A dataset index (2 training cameras) in the tiny run's results folder under ``workdir``,
    so that a dry run plans every job after that checkpoint."""
    results = workdir / TINY_RESULTS
    (results / "demo-data").mkdir(parents=True)
    (results / "shared").mkdir()
    pd.DataFrame(
        {
            "path": [f"/d/{i}.jpg" for i in range(4)],
            "camid": [1, 2, 1, 2],
            "pid": [0, 0, 1, 1],
            "split": ["train", "train", "query", "gallery"],
        }
    ).to_csv(results / "shared" / "index.csv", index=False)


def test_replicates_share_the_jobs_that_do_not_depend_on_the_seed(tmp_path):
    """With 3 replicates, a dry run (once the dataset index exists) plans the initial model,
    its features and evaluation and the first intra-camera clustering once, and stage 1's
    training, stage 2 and the evaluation of its final models once per seed."""
    write_index(tmp_path)
    result = snakemake(tmp_path, "--configfile", str(TINY), "--config", "replicates=3", "-n")
    jobs = planned_jobs(result)
    count = {rule: sum(1 for r, _ in jobs if r == rule) for rule, _ in jobs}
    shared = {output for rule, output in jobs if "/seed" not in output}
    assert {output for _, output in jobs if "model_init" in output} == {
        f"{TINY_RESULTS}/shared/model_init.{name}"
        for name in ("pt", "train.h5", "query.h5", "gallery.h5", "metrics.csv")
    }
    assert count["init_model"] == 1 and count["compare"] == 1
    assert count["cluster_intra"] == 2  # one per training camera, for every seed
    assert {o for r, o in jobs if r == "cluster_intra"} <= shared
    # per seed: 2 cameras' encoders; 2 experiments x 2 rounds of training; 2 final models
    assert count["train_intra"] == 3 * 2 and count["train_inter"] == 3 * 2 * 2
    assert count["evaluate"] == 1 + 3 * 2 and count["report"] == 3 * 2
    for seed in (0, 1, 2):
        assert f"{TINY_RESULTS}/calr/seed{seed}/round1/model.metrics.csv" in {o for _, o in jobs}


def test_every_round_evaluates_each_earlier_round_for_the_report_only(tmp_path):
    """evaluate.every_round adds, per experiment and round before the last, one evaluation (and
    its query and gallery features), read by the report and not by the comparison; off, it plans
    none. CALR trains 3 rounds of 1 epoch here, the baseline the tiny config's 2."""
    write_index(tmp_path)
    planned = {}
    for every_round in (False, True):

        def change(config, every_round=every_round):
            config["experiments"]["calr"]["epochs"] = 3
            config["evaluate"] = {"every_round": every_round}

        config = write_config(tmp_path, f"every_round_{every_round}.yaml", change)
        result = snakemake(tmp_path, "--configfile", str(config), "-n", "-p")
        planned[every_round] = (planned_jobs(result), result.stdout)
    off, on = (
        {(r, o) for r, o in jobs if r in ("evaluate", "extract")} for jobs, _ in planned.values()
    )
    earlier = [
        f"{TINY_RESULTS}/{exp}/seed0/round{r}/model"
        for exp, r in (("baseline", 0), ("calr", 0), ("calr", 1))
    ]
    assert on - off == {
        (rule, f"{model}.{name}")
        for model in earlier
        for rule, name in (
            ("evaluate", "metrics.csv"),
            ("extract", "query.h5"),
            ("extract", "gallery.h5"),
        )
    }
    assert off <= on and {o for r, o in off if r == "evaluate"} == {
        f"{TINY_RESULTS}/{name}.metrics.csv"
        for name in ("shared/model_init", "baseline/seed0/round1/model", "calr/seed0/round2/model")
    }
    commands = planned[True][1].splitlines()
    reports = [c for c in commands if "python -m pipeline report" in c]
    assert [c.count("--round-metrics") for c in reports] == [1, 1]
    assert any(
        "calr/seed0/round0/model.metrics.csv" in c and "round1/model.metrics.csv" in c
        for c in reports
    )
    (compare,) = [c for c in commands if "python -m pipeline compare" in c]
    assert "round0" not in compare and "calr/seed0/round2/model.metrics.csv" in compare
    assert "--round-metrics" not in planned[False][1]


def project_copy(tmp_path: Path) -> Path:
    """The workflow and the package, copied elsewhere (as a fresh checkout would be)."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("Snakefile", "config.yaml", "workflow", "pipeline", "profiles"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def planned_with(copy: Path, workdir: Path) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(copy / "Snakefile")]
        + ["--directory", str(workdir), "--cores", "2", "--configfile", str(TINY), "-n"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return {rule for rule, _ in planned_jobs(result)}


def test_code_is_tracked_by_content_and_edits_rerun_only_the_stages_that_import_them(
    tiny_workflow, tmp_path
):
    copy = project_copy(tmp_path)
    workdir = tiny_workflow.workdir
    # another checkout of the same code, every file touched: nothing to do
    for path in copy.rglob("*"):
        os.utime(path)
    assert planned_with(copy, workdir) == set()
    tables = copy / "pipeline" / "report" / "tables.py"
    original = tables.read_text()
    tables.write_text(original + "\n# an edit\n")
    assert planned_with(copy, workdir) == {"compare", "report", "all"}
    tables.write_text(original)
    (copy / "pipeline" / "cluster" / "refine.py").write_text(
        (ROOT / "pipeline" / "cluster" / "refine.py").read_text() + "\n# an edit\n"
    )
    rules = planned_with(copy, workdir)
    assert {"refine", "train_inter", "evaluate", "compare", "report"} <= rules
    assert not rules & UPSTREAM_OF_REFINEMENT
