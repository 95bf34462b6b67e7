"""Progress for people and for files: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import logging

from nash_ds import log as nash_log


def test_progress_line_names_what_a_reader_needs():
    line = nash_log.progress_line("prune", 40, 400, {"loss": 0.61537, "expected_sparsity/encoder": 0.1204,
                                                      "expected_sparsity/model": 0.4, "target_sparsity": 0.1,
                                                      "tokens_per_sec": 1234.4, "kd": 9.0},
                                  lr=2e-3, eta_s=100.2)
    assert line == ("prune step 40/400 (10%): loss 0.6154, exp. sparsity enc 0.120, model 0.400, target 0.100, "
                    "lr 2.0e-03, 1234 tok/s, ETA 1:40")
    line = nash_log.progress_line("train", 1, 3, {"loss": 1.0}, lr=None, eta_s=7300)
    assert line.endswith("loss 1.0000, ETA 2:01:40")


def test_without_a_terminal_progress_is_one_log_line_per_logging_step(monkeypatch):
    monkeypatch.setattr(nash_log, "progress_bars", lambda: False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("nash_ds.log")
    logger.addHandler(handler)
    old = logging.getLogger("nash_ds").level
    logging.getLogger("nash_ds").setLevel(logging.INFO)
    try:
        p = nash_log.Progress(total=4, initial=0, desc="train")
        assert p.bar is None
        for step in range(1, 5):
            p.step(1.0)
            if step % 2 == 0:
                p.logged(step, {"loss": 1.0, "tokens_per_sec": 10.0}, lr=1e-3)
        p.write("step 4: rougeL=1.0")
        p.close()
    finally:
        logger.removeHandler(handler)
        logging.getLogger("nash_ds").setLevel(old)
    messages = [r.getMessage() for r in records]
    assert [m.split(":")[0] for m in messages] == ["train step 2/4 (50%)", "train step 4/4 (100%)", "step 4"]
    assert "ETA 0:00" in messages[1]


def test_on_a_terminal_progress_is_a_bar(monkeypatch, capsys):
    monkeypatch.setattr(nash_log, "progress_bars", lambda: True)
    p = nash_log.Progress(total=2, initial=0, desc="train")
    assert p.bar is not None
    p.step(0.5)
    p.logged(1, {"loss": 0.5})  # the bar shows it: no line
    p.close()
    assert "train" in capsys.readouterr().err


def test_library_bars_are_off_without_a_terminal(monkeypatch):
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging

    monkeypatch.setattr(nash_log, "progress_bars", lambda: False)
    try:
        nash_log.quiet_library_progress()
        assert not datasets.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
        assert hub.are_progress_bars_disabled()
    finally:
        datasets.enable_progress_bars()
        hf_logging.enable_progress_bar()
        hub.enable_progress_bars()
