import pytest
from scipy.stats import binomtest

from mosaserve.adapters.paired import discordant, hits_string, mcnemar_p
from mosaserve.adapters.quality_tables import format_against_pixels


def test_discordant_counts_the_images_only_one_classifier_gets_right():
    ours, pixels = hits_string([True, True, False, False, True]), hits_string([True, False, True, False, False])
    assert (ours, discordant(ours, pixels)) == ("11001", (2, 1))
    with pytest.raises(ValueError, match="different test sets"):
        discordant("101", "10")


@pytest.mark.parametrize("wins, losses", [(0, 0), (10, 0), (0, 10), (3, 4), (7, 1), (12, 30), (60, 41)])
def test_mcnemar_p_is_scipys_exact_two_sided_binomial_test(wins, losses):
    expected = 1.0 if wins + losses == 0 else binomtest(wins, wins + losses, 0.5).pvalue
    assert mcnemar_p(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_ten_lone_wins_are_clear_and_one_against_four_is_not():
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024) and mcnemar_p(1, 4) == pytest.approx(0.375)


def test_the_table_compares_each_run_to_the_pixels_of_its_own_split():
    def row(method, hits, split=0, seed=None):
        return {"task": "faces", "train_images": 4, "method": method, "split": split, "seed": seed, "test_hits": hits}

    rows = [row("pixel logistic regression", "1100"), row("adapter", "1011", seed=0), row("adapter", "1111", seed=1),
            row("pixel logistic regression", "0000", split=1), row("adapter", "1111", split=1, seed=0)]
    # split 0: (2 only here, 1 only with pixels) and (2, 0); split 1: (4, 0): p 1.0, 0.5, 0.125.
    assert "| faces | 4 | adapter | 2.7 | 0.3 | 0.12-1 |" in format_against_pixels(rows)
    assert "adapter" not in format_against_pixels([{**r, "test_hits": ""} for r in rows])  # reports without hits
