"""``jsae absorption`` end to end on SmolLM2 with tiny settings (slow), and its input errors (fast)."""

import json

import pytest

from jsae.cli import main


@pytest.mark.slow
def test_cli_trains_and_measures(tmp_path, smollm2):
    rc = main(
        [
            "absorption",
            "--layer",
            "3",
            "--n-train",
            "600",
            "--n-test",
            "300",
            "--widths",
            "256",
            "--sparsity",
            "2",
            "--steps",
            "100",
            "--batch",
            "256",
            "--text-tokens",
            "8192",
            "--paper-candidates",
            "1",
            "--ig-steps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc in (0, None)
    run = next(tmp_path.glob("absorption-*"))
    res = json.loads((run / "results.json").read_text())
    (sae,) = res["saes"]
    assert sae["width"] == 256 and sae["l0"] > 0
    assert 0.0 <= sae["absorption_fraction"] <= 1.0 and 0.0 <= sae["full_absorption"] <= 1.0
    assert len(sae["per_letter"]) == 26
    assert (run / "absorption_vs_l0.png").stat().st_size > 1000
    assert (run / "absorption_per_letter.png").stat().st_size > 1000


def test_cli_rejects_a_bad_layer(tmp_path, capsys, smollm2):
    assert main(["absorption", "--layer", "30", "--out", str(tmp_path)]) == 2
    assert "--layer 30 is out of range" in capsys.readouterr().err


def test_cli_rejects_an_sae_for_another_layer(tmp_path, capsys, smollm2):
    import jax

    from jsae.io import hook_name, save_saelens
    from jsae.sae import relu

    save_saelens(relu.init(jax.random.key(0), 576, 64), tmp_path / "sae", hook_name=hook_name(5, "resid_post"))
    from jsae.commands.absorption import load_saes

    with pytest.raises(ValueError, match="pass --layer 5"):
        load_saes([str(tmp_path / "sae")], 3)
