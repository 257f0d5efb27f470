import copy
import json

from echo.evaluate.sections import (PAPER, ablation_table, confusion_table, content_views_table, phonetic_stage_table, diarization_by_k_table, format_cell, main_table,
                                    separation_by_k_table, segmentation_table, status, tuning_table)


def _cond(der, lo, hi):
    return {"der": der, "der_ci": [lo, hi], "jer": 0.2, "jer_ci": [0.1, 0.3], "missed": 1.0, "false_alarm": 2.0,
            "confusion": 3.0, "total": 100.0, "n_recordings": 4}


DIAR = {
    "condition": "blind",
    "primary": {**_cond(0.1234, 0.1, 0.15), "by_k": {"2": _cond(0.025, 0.02, 0.03), "3": _cond(0.0712, 0.06, 0.08)}},
    "secondary": {**_cond(0.09, 0.08, 0.1), "by_k": {"2": _cond(0.01, 0.0, 0.02), "3": _cond(0.05, 0.04, 0.06)}},
    "count": {"accuracy": 0.75, "accuracy_ci": [0.5, 1.0], "labels": [2, 3], "confusion": [[2, 0], [1, 1]],
              "by_k": {"2": {"accuracy": 1.0, "accuracy_ci": [1.0, 1.0], "n": 2}, "3": {"accuracy": 0.5, "accuracy_ci": [0.0, 1.0], "n": 2}}},
}
SEP = {"count_accuracy": 0.995, "count_accuracy_ci": [0.99, 1.0], "pit_accuracy": 0.981, "pit_accuracy_ci": [0.97, 0.99],
       "si_sdr": 8.5, "si_sdr_ci": [8.0, 9.0], "si_sdri": 10.25, "si_sdri_ci": [9.9, 10.6],
       "by_k": {"2": {"n_mixtures": 10, "count_accuracy": 1.0, "count_accuracy_ci": [1, 1], "pit_accuracy": 1.0,
                      "pit_accuracy_ci": [1, 1], "si_sdr": 9.0, "si_sdr_ci": [8, 10], "si_sdri": 11.0, "si_sdri_ci": [10, 12]}},
       "n_mixtures": 10, "count": {"labels": [2], "confusion": [[10]]}}
ABIL = {"factorisation_gap": 61.5, "gap_phone_points": 40.0, "per": 0.262, "per_ci_low": 0.25, "per_ci_high": 0.27,
        "per_vq": float("nan"), "eer": 0.05, "speaker_id_acc_speaker_view": 0.9, "speaker_id_acc_content_view": 0.285,
        "phone_acc_content_view": 0.7, "phone_acc_speaker_view": 0.3, "gap_speaker_points": 61.5,
        "latent_speaker_id_acc": 0.8, "latent_phone_acc": 0.6, "content_view": "phones",
        "content_views": {"phones": {"speaker_id_acc": 0.285, "phone_acc": 0.7, "gap_speaker_points": 61.5, "gap_phone_points": 40.0},
                          "hidden": {"speaker_id_acc": 0.85, "phone_acc": 0.65, "gap_speaker_points": 5.0, "gap_phone_points": 35.0}},
        "content_views_dev": {"hidden": {"speaker_id_acc": 0.8, "phone_acc": 0.6, "gap_speaker_points": 10.0, "gap_phone_points": 30.0},
                              "phones": {"speaker_id_acc": 0.3, "phone_acc": 0.62, "gap_speaker_points": 60.0, "gap_phone_points": 32.0}}}


def _row(md, name):
    return next(line for line in md.splitlines() if line.startswith(f"| {name}"))


def test_main_table_shows_given_numbers_paper_and_target_status():
    md = main_table(DIAR, SEP, ABIL)
    assert "12.34 [10.00, 15.00]" in _row(md, "Blind DER, all K, primary") and f"{PAPER['der_blind']:.2f}" in md
    assert _row(md, "Blind DER, all K, primary").endswith("≤ 12 % | **missed** |")  # 12.34 > 12
    assert _row(md, "Blind DER, K=2").endswith("≤ 5 % | met |")          # 2.50 <= 5
    assert _row(md, "Blind DER, K=3").endswith("≤ 8 % | met |")          # 7.12 <= 8
    assert _row(md, "Blind DER, K=4") == "| Blind DER, K=4, primary (%) | n/a | — | ≤ 11 % | n/a |"  # not evaluated
    assert "Blind DER, K=1" not in md  # no K=1 recordings here
    assert _row(md, "False alarm, K=1") == "| False alarm, K=1 (%) | n/a | — | ≤ 3 % | n/a |"
    assert "98.10 [97.00, 99.00]" in _row(md, "PIT separation") and "**missed**" in _row(md, "PIT separation")
    assert "| met |" in _row(md, "Speaker-count accuracy, mixtures")   # 99.5 >= 90
    assert _row(md, "Speaker-count accuracy, conversations").endswith("≥ 90 % | **missed** |")  # 75 < 90
    assert "+10.25 [9.90, 10.60]" in _row(md, "Latent SI-SDRi")
    assert "| met |" in _row(md, "Latent SI-SDRi") and "+9.52" in _row(md, "Latent SI-SDR (dB)")
    assert "+61.50" in _row(md, "Factorisation gap, speaker-ID") and "| met |" in _row(md, "Factorisation gap, speaker-ID")
    assert "26.20 [25.00, 27.00]" in _row(md, "PER, continuous") and "**missed**" in _row(md, "PER, continuous")
    # the headline content view is named, and the old hidden-layer view stays visible beside it
    assert _row(md, "Factorisation gap, speaker-ID, content view = phones").endswith("≥ 40 pts | met |")
    assert "+5.00" in _row(md, "Factorisation gap, speaker-ID, hidden-layer view")
    assert "70.00" in _row(md, "Frame phone accuracy, content view = phones") and "65.00" in _row(md, "Frame phone accuracy, hidden-layer")
    assert "n/a" in _row(md, "PER, through VQ")
    assert all("n/a" in _row(main_table(None, None, None), n) for n in ("Blind DER, all K", "PIT separation"))


def test_seed_lists_give_mean_and_std_and_json_keys_work():
    other = copy.deepcopy(SEP)
    other["pit_accuracy"] = 0.991
    md = main_table(None, [SEP, other], None)
    assert "98.60 ± 0.71 (n=2)" in _row(md, "PIT separation") and "| **missed** |" in _row(md, "PIT separation")
    assert "training seeds" in md
    # by-K keys survive a JSON round trip (string keys) and plain int keys
    as_json = json.loads(json.dumps(DIAR))
    as_int = copy.deepcopy(DIAR)
    as_int["primary"]["by_k"] = {int(k): v for k, v in DIAR["primary"]["by_k"].items()}
    assert "2.50 [2.00, 3.00]" in main_table(as_json) and "2.50 [2.00, 3.00]" in main_table(as_int)


def test_by_k_confusion_ablation_and_tuning_tables():
    md = diarization_by_k_table(DIAR)
    k3 = _row(md, "K=3")
    assert "7.12 [6.00, 8.00]" in k3 and "5.00 [4.00, 6.00]" in k3 and "50.00 [0.00, 100.00]" in k3
    assert "| 1.00 | 2.00 | 3.00 |" in k3  # missed / FA / confusion as % of 100 s of speech
    assert _row(md, "all").split("|")[2].strip() == "4"
    sep = separation_by_k_table(SEP)
    assert "+11.00 [10.00, 12.00]" in _row(sep, "K=2") and "98.10" in _row(sep, "all")
    conf = confusion_table(DIAR)
    assert _row(conf, "K=3") == "| K=3 | 1 | 1 |"
    abl = ablation_table({"pretrain": {**ABIL, "gap_speaker_points": 0.0}, "+routing": [ABIL, ABIL]})
    assert "| pretrain | 90.00 |" in abl and "+0.00" in _row(abl, "pretrain")
    assert "+61.50 ± 0.00 (n=2)" in _row(abl, "+routing")
    assert "blind DER" not in abl  # no stage has it
    assert "blind DER" in ablation_table({"+routing": {**ABIL, "der": 0.2}})
    views = content_views_table({"pretrain": {**ABIL, "content_views": {}}, "+routing": ABIL})
    assert "pretrain" not in views  # no phonetic head, no content views
    assert _row(views, "+routing | hidden") == "| +routing | hidden (CTC head's last hidden layer) | 85.00 | 65.00 | +5.00 | +35.00 | 80.00 | 60.00 | +10.00 |"
    assert "| +routing | **phones (posteriorgram over phones, blank removed)** | 28.50 | 70.00 | +61.50 |" in views
    assert views.index("| +routing | hidden") < views.index("| +routing | **phones")  # the choice's tie order
    assert "n/a (no stage" in content_views_table({"pretrain": {**ABIL, "content_views": {}}})
    ph = phonetic_stage_table({"best_step": 50, "config": {"codebook_size": 256}},
                              [{"step": 0, "per_ctc": 1.0, "per_vq": 1.0, "vq_perplexity": 3.25, "vq_usage": 0.1, "speaker_eer": 0.02},
                               {"step": 50, "per_ctc": 0.4, "per_vq": 0.6, "vq_perplexity": 80.0, "vq_usage": 0.5}])
    assert _row(ph, "0 |") == "| 0 | 100.00 | 100.00 | 3.2 | 10.0 | 2.00 |"
    assert _row(ph, "50 (selected)") == "| 50 (selected) | 40.00 | 60.00 | 80.0 | 50.0 | n/a |" and "256 codes" in ph
    assert "n/a (not trained)" in phonetic_stage_table(None, None)
    tune = tuning_table([{"Fa": 0.3, "Fb": 17, "loopP": 0.0, "ahc_threshold": 0.3, "der": 0.2, "der_smoothed": 0.15,
                          "count_accuracy": 0.5, "selected": True},
                         {"Fa": 0.1, "Fb": 5, "loopP": 0.0, "ahc_threshold": 0.3, "der": 0.1, "der_smoothed": 0.3,
                          "count_accuracy": 0.75, "selected": False}])
    assert tune.splitlines()[4] == "| **selected** 0.3 | 17 | 0 | 0.3 | 20.00 | 15.00 | 50.0 |"  # the selected one first
    assert tune.splitlines()[5] == "| 0.1 | 5 | 0 | 0.3 | 10.00 | 30.00 | 75.0 |"
    seg = segmentation_table({"best_step": 2, "config": {"chunk_s": 5.0, "head": {"max_speakers": 3, "max_per_frame": 2}},
                              "dev_chunks": 10, "encoder_sha256_before": "a", "encoder_sha256_after": "a"},
                             [{"step": 1, "error": 0.5, "missed": 0.2, "false_alarm": 0.2, "confusion": 0.1,
                               "count_accuracy": 0.6, "loss": 1.0},
                              {"step": 2, "error": 0.25, "missed": 0.1, "false_alarm": 0.1, "confusion": 0.05,
                               "count_accuracy": 0.8, "loss": 0.5}])
    assert "| 2 (selected) | 25.00 | 10.00 | 10.00 | 5.00 | 80.00 | 0.5000 |" in seg and "hash unchanged" in seg


def test_format_cell_and_status():
    assert format_cell({"a": {"b": 0.5}}, "a.b", 100, digits=1) == "50.0"
    assert format_cell({"a": float("nan")}, "a") == "n/a" and format_cell(None, "a") == "n/a"
    assert format_cell([{"a": 1.0}], "a") == "1.00 (n=1)"
    assert status(3.0, ("<=", 3.0)) == "met" and status(3.01, ("<=", 3.0)) == "**missed**"
    assert status(None, (">=", 1.0)) == "n/a" and status(5.0, None) == "—"
