"""The ``jsae`` command line: every subcommand is listed, the synthetic demo writes a run directory whose
SAEs recovered their known features, and bad input ends in one readable line (exit 2), not a traceback."""

import json

import pytest

from jsae.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text


def test_bench_help_lists_each_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for name in ("train", "models", "evals", "all"):
        assert name in text


def test_synthetic_demo_recovers_the_true_features(tmp_path, capsys):
    rc = main(
        [
            "demo",
            "--synthetic",
            "--n-saes",
            "4",
            "--d-in",
            "16",
            "--n-features",
            "12",
            "--tokens",
            "4096",
            "--d-sae",
            "24",
            "--k",
            "3",
            "--steps",
            "600",
            "--batch",
            "128",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    run = next(tmp_path.glob("demo-*"))
    res = json.loads((run / "results.json").read_text())
    assert res["n_saes"] == 4 and len(res["per_sae"]["recovery"]) == 4
    # a random 24-latent dictionary in 16 dimensions matches 12 random unit features at ~0.47 mean max
    # cosine (numpy, 50 draws); these short runs reach ~0.88
    assert res["mean_recovery"] > 0.8
    assert json.loads((run / "config.json").read_text())["command"] == "demo"
    assert (run / "l0_vs_explained_variance.png").stat().st_size > 1000
    assert "recovered true features" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    rc = main(["train", str(tmp_path / "missing.npy"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no activation file" in err and "numpy.save" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["circuits", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["circuits", "--prompts", "0"], "--prompts must be >= 1"),
        (["circuits", "--per-head-top-k", "99"], "top_k must be in 1..d_sae (16), got 99"),
    ],
)
def test_circuits_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
